"""The CLIP paper's effective robustness (Figure 13, after Taori et al., 2020): each zero-shot model's average top-1
over five ImageNet distribution shifts against the line ImageNet-trained models lie on, in logit space.

Effective robustness is reported in accuracy units, as the CLIP paper and Taori et al. report it: a model's shift
average minus the baseline's prediction at its ImageNet accuracy, `shift - sigmoid(a * logit(imagenet) + b)`, where
`logit(shift) = a * logit(imagenet) + b` is a least-squares fit over ImageNet-trained models. `gap_closed` is the
share of the baseline's "robustness gap" (ImageNet accuracy minus expected shift accuracy) that a model closes,
`effective_robustness / (imagenet - expected_shift)`: 1 on the y = x line of an ideally robust model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from pipeline.data.languages import ENGLISH
from pipeline.errors import PipelineError
from pipeline.reports import plots
from pipeline.reports.results import ScoreRecord
from pipeline.stages.heads import ZEROSHOT

SHIFTS: tuple[str, ...] = ("imagenetv2", "imagenet_sketch", "imagenet-r", "imagenet-a", "objectnet")
IN_DISTRIBUTION = "imagenet1k"
BASELINE_FILE = Path(__file__).with_name("published") / "robustness_baseline.csv"
BUNDLED_SOURCE = ("Taori et al. 2020: {n} ImageNet-trained models, "
                  "modestyachts/imagenet-testbed@f4083a2 robustness_top1s.csv")
POINT = ["model", "pretrained", "protocol", "prompts", "head"]
PREFERRED_SOURCE = "datacomp"  # the same dataset from two sources: DataComp's copy is what its table reports


def logit(p: np.ndarray | float) -> np.ndarray | float:
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-z))


def _checked(accuracies: pd.Series, what: str) -> np.ndarray:
    """Accuracies as fractions strictly inside (0, 1): the logit of 0 or 1 is infinite."""
    values = accuracies.to_numpy(dtype=float)
    bad = ~((values > 0) & (values < 1))
    if bad.any():
        raise PipelineError(f"{what} accuracy {values[bad][0]!r} is not strictly between 0 and 1, so its logit is "
                            f"undefined; give accuracies as fractions and leave out models at 0 % or 100 %")
    return values


@dataclass(frozen=True)
class Baseline:
    """`logit(shift) = slope * logit(imagenet) + intercept`, fitted on `points` (columns name, imagenet, shift:
    accuracies in [0, 1]) from `source`."""

    slope: float
    intercept: float
    source: str
    points: pd.DataFrame

    def predict(self, imagenet: np.ndarray | float) -> np.ndarray | float:
        """The shift average the baseline expects at ImageNet accuracy `imagenet` (fractions)."""
        return sigmoid(self.slope * logit(np.asarray(imagenet, dtype=float)) + self.intercept)


def fit_baseline(points: pd.DataFrame, source: str) -> Baseline:
    """Least squares of logit(shift) on logit(imagenet) over the rows with both (columns name, imagenet, shift)."""
    complete = points.dropna(subset=["imagenet", "shift"]).reset_index(drop=True)
    if len(complete) < 2 or complete["imagenet"].nunique() < 2:
        raise PipelineError(f"the robustness baseline from {source} has {len(complete)} model(s) with ImageNet and all "
                            f"of {', '.join(SHIFTS)}; a line needs at least 2 with different ImageNet accuracies")
    x = logit(_checked(complete["imagenet"], f"{source}: ImageNet"))
    y = logit(_checked(complete["shift"], f"{source}: shift average"))
    slope, intercept = np.polyfit(x, y, 1)
    return Baseline(float(slope), float(intercept), source, complete[["name", "imagenet", "shift"]])


def bundled_baseline() -> Baseline:
    """Taori et al.'s standard ImageNet models (`published/robustness_baseline.csv`, percent; `.md` beside it: sources)."""
    published = pd.read_csv(BASELINE_FILE)
    accuracies = published[[IN_DISTRIBUTION, *SHIFTS]] / 100.0
    points = pd.DataFrame({"name": published["name"], "imagenet": accuracies[IN_DISTRIBUTION],
                           "shift": accuracies[list(SHIFTS)].mean(axis=1, skipna=False)})
    return fit_baseline(points, BUNDLED_SOURCE.format(n=len(points)))


def _one_per_dataset(records: list[ScoreRecord]) -> dict[tuple[str, ...], ScoreRecord]:
    """The zero-shot record of each (point, dataset); a dataset read from several sources keeps DataComp's copy."""
    found: dict[tuple[str, ...], list[ScoreRecord]] = {}
    for record in records:
        if record.head == ZEROSHOT and record.dataset in (IN_DISTRIBUTION, *SHIFTS) and record.language == ENGLISH:
            key = (record.model, record.pretrained, record.protocol, record.prompts, record.head_label, record.dataset)
            found.setdefault(key, []).append(record)
    chosen = {}
    for key, candidates in found.items():
        preferred = [r for r in candidates if r.source == PREFERRED_SOURCE] or candidates
        if len(preferred) > 1:
            raise PipelineError(f"{len(preferred)} results for {' / '.join(key)} (sources "
                                f"{sorted(r.source for r in preferred)}); keep one per dataset before computing "
                                f"effective robustness, e.g. filter the records by source")
        chosen[key] = preferred[0]
    return chosen


def covers(records: Iterable[ScoreRecord]) -> bool:
    """Whether `records` hold a zero-shot ImageNet result and one on a shift set, so that a table can be made."""
    datasets = {r.dataset for r in records if r.head == ZEROSHOT}
    return IN_DISTRIBUTION in datasets and bool(datasets & set(SHIFTS))


def points(records: Iterable[ScoreRecord]) -> pd.DataFrame:
    """One row per zero-shot (model, pretrained, protocol, prompts, head): `imagenet` (acc1 on imagenet1k), one column
    per shift set, `shift` (their plain mean) and `missing` (the datasets it lacks; `shift` is then NaN, never an
    average over fewer sets). Accuracies are fractions. A dataset read from several sources keeps DataComp's copy;
    two copies from other sources raise, asking to filter the records."""
    chosen = _one_per_dataset(list(records))
    if not any(key[-1] == IN_DISTRIBUTION for key in chosen):
        raise PipelineError(f"no zero-shot {IN_DISTRIBUTION} results among the records, so there is no ImageNet "
                            f"accuracy to place a model by; run (or import) {IN_DISTRIBUTION} with the shift sets")
    rows: dict[tuple[str, ...], dict[str, object]] = {}
    for (*point, dataset), record in chosen.items():
        row = rows.setdefault(tuple(point), dict(zip(POINT, point)))
        accuracy = record.value("acc1")
        if accuracy > 1:
            raise PipelineError(f"acc1 = {accuracy} for {' / '.join(point)} on {dataset} is above 1; effective "
                                f"robustness expects accuracies as fractions")
        row[dataset] = accuracy
    table = pd.DataFrame(list(rows.values()), columns=[*POINT, IN_DISTRIBUTION, *SHIFTS])
    table = table.rename(columns={IN_DISTRIBUTION: "imagenet"})
    present = table[["imagenet", *SHIFTS]].notna().to_numpy()
    names = np.array([IN_DISTRIBUTION, *SHIFTS])
    table["missing"] = [", ".join(names[~row]) for row in present]
    table["shift"] = table[list(SHIFTS)].mean(axis=1, skipna=False)
    table.loc[table["missing"] != "", "shift"] = math.nan
    return table[[*POINT, "imagenet", "shift", *SHIFTS, "missing"]].astype({c: float for c in ["imagenet", *SHIFTS]})


def baseline_from_records(records: Iterable[ScoreRecord], source: str) -> Baseline:
    """A baseline fitted on imported results (e.g. `results.from_directory`) of ImageNet-trained models: one point
    per (model, pretrained), which must have ImageNet and all five shift sets."""
    table = points(records)
    complete = table[table["missing"] == ""]
    repeated = complete[complete.duplicated(["model", "pretrained"], keep=False)]
    if not repeated.empty:
        first = repeated.iloc[0]
        raise PipelineError(f"{first['model']} / {first['pretrained']} has several complete points (protocols or "
                            f"prompt sets) in the baseline records from {source}; keep one per model")
    names = complete["model"] + np.where(complete["pretrained"] != "", " / " + complete["pretrained"], "")
    return fit_baseline(pd.DataFrame({"name": names, "imagenet": complete["imagenet"], "shift": complete["shift"]}),
                        source)


def effective_robustness(records: Iterable[ScoreRecord], baseline: Baseline) -> pd.DataFrame:
    """`points(records)` with `expected_shift` (the baseline's prediction at the model's ImageNet accuracy),
    `effective_robustness` (shift - expected_shift, accuracy units) and `gap_closed`, best first; points missing a
    dataset keep NaN and come last."""
    table = points(records)
    complete = table["missing"] == ""
    imagenet = table.loc[complete, "imagenet"]
    _checked(imagenet, f"{IN_DISTRIBUTION} (zero-shot)")
    _checked(table.loc[complete, "shift"], "shift average (zero-shot)")
    table["expected_shift"] = math.nan
    table.loc[complete, "expected_shift"] = baseline.predict(imagenet.to_numpy())
    table["effective_robustness"] = table["shift"] - table["expected_shift"]
    table["gap_closed"] = table["effective_robustness"] / (table["imagenet"] - table["expected_shift"])
    table.attrs["baseline"] = baseline.source
    return table.sort_values("effective_robustness", ascending=False, na_position="last",
                             kind="stable").reset_index(drop=True)


# -- the figure ----------------------------------------------------------------------------------------------
def _percent_ticks(low: float, high: float) -> list[float]:
    """Round percentages inside (low, high), coarse where the axis is long."""
    for candidates in ([1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99], range(5, 100, 5), range(1, 100)):
        ticks = [c / 100 for c in candidates if low <= c / 100 <= high]
        if len(ticks) >= 4:
            return ticks
    return ticks


def _limits(values: np.ndarray) -> tuple[float, float]:
    """The data's range padded by 0.25 in logit units each side."""
    z = logit(values[np.isfinite(values)])
    return float(sigmoid(z.min() - 0.25)), float(sigmoid(z.max() + 0.25))


def _labels(table: pd.DataFrame) -> list[str]:
    """model / pretrained, and any of protocol, prompts and head that differ between the plotted points."""
    varying = [c for c in ("protocol", "prompts", "head") if table[c].nunique() > 1]
    return [" / ".join(str(row[c]) for c in ("model", "pretrained", *varying) if str(row[c]))
            for _, row in table.iterrows()]


def plot(table: pd.DataFrame, baseline: Baseline, path: Path) -> Path:
    """The CLIP paper's Figure 13 (left) from an `effective_robustness` table: ImageNet top-1 against the average
    over the five shifts on logit axes, the baseline's models and line, y = x, and each complete point in the legend
    with its effective robustness."""
    plt = plots.pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

    shown = table[table["missing"] == ""].reset_index(drop=True)
    xs = np.concatenate([baseline.points["imagenet"].to_numpy(), shown["imagenet"].to_numpy()])
    ys = np.concatenate([baseline.points["shift"].to_numpy(), shown["shift"].to_numpy(),
                         shown["expected_shift"].to_numpy()])
    x_low, x_high = _limits(xs)
    y_low, y_high = _limits(np.concatenate([ys, [x_low, x_high]]))  # room for y = x over the plotted ImageNet range

    fig, ax = plt.subplots(figsize=(10.5, 6.5))
    ax.set_xscale("logit")
    ax.set_yscale("logit")
    ax.scatter(baseline.points["imagenet"], baseline.points["shift"], s=12, color="0.6", zorder=2,
               label=f"ImageNet-trained models ({len(baseline.points)})")
    grid = sigmoid(np.linspace(logit(x_low), logit(x_high), 200))
    ax.plot(grid, baseline.predict(grid), color="0.35", linewidth=1.5, zorder=2,
            label=f"baseline fit: logit(y) = {baseline.slope:.3f} logit(x) {baseline.intercept:+.3f}")
    ax.plot(grid, grid, color="black", linestyle="--", linewidth=1, zorder=1, label="ideal robust model (y = x)")
    markers = "os^DvP*Xph"
    for index, (label, (_, row)) in enumerate(zip(_labels(shown), shown.iterrows())):
        colour, marker = f"C{index % 10}", markers[(index // 10) % len(markers)]
        ax.vlines(row["imagenet"], row["expected_shift"], row["shift"], color=colour, linewidth=1, alpha=0.6, zorder=3)
        gain = f"{100 * row['effective_robustness']:+.1f} pts ({100 * row['gap_closed']:.0f} % of gap)"
        ax.scatter(row["imagenet"], row["shift"], s=60, color=colour, marker=marker, edgecolor="black",
                   linewidth=0.5, zorder=4, label=f"{label}: {gain}")
    for axis, (low, high), set_limits in ((ax.xaxis, (x_low, x_high), ax.set_xlim),
                                          (ax.yaxis, (y_low, y_high), ax.set_ylim)):
        set_limits(low, high)
        axis.set_ticks(_percent_ticks(low, high))
        axis.set_major_formatter(FuncFormatter(lambda p, _: f"{100 * p:g}"))
        axis.set_minor_locator(NullLocator())
        axis.set_minor_formatter(NullFormatter())
    ax.grid(True, color="0.9", linewidth=0.6)
    ax.set_xlabel(f"ImageNet top-1 accuracy (%), {IN_DISTRIBUTION}")
    ax.set_ylabel(f"average top-1 over {len(SHIFTS)} shifts (%)")
    ax.set_title(f"Effective robustness: {', '.join(SHIFTS)}\nbaseline: {baseline.source}", fontsize=10)
    left_out = len(table) - len(shown)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False,
              title="zero-shot points: effective robustness"
                    + (f"\n({left_out} left out: missing datasets, see the table)" if left_out else ""),
              title_fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
