"""Score records, the aggregate stage's input: from score runs in MLflow, from `clip_benchmark eval` JSON files,
or from DataComp's `eval_results.jsonl`."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from pipeline.data import catalog
from pipeline.data.languages import ENGLISH
from pipeline.errors import PipelineError
from pipeline.stages.heads import ALL_SHOTS, LINEAR_PROBE, NOT_APPLICABLE, ZEROSHOT
from pipeline.store import artifacts
from pipeline.store.cache import real_metric_name
from pipeline.store.tracking import JOB_STAGE, TrackingStore, search_all

EXTERNAL_PROMPTS = "external"
# clip_benchmark's names of the multilingual retrieval sets, as the catalog calls them (multilingual MSCOCO is XTD-10)
MULTILINGUAL_NAMES = {"crossmodal3600": "multilingual/crossmodal3600", "xtd10": "multilingual/xtd10",
                      "multilingual_mscoco_captions": "multilingual/xtd10", "xtd200": "multilingual/xtd200",
                      "flickr30k-200": "multilingual/flickr30k_200"}
EXTERNAL_SOURCE = "external"  # results read from files: whoever produced them chose the data
CLIP_BENCHMARK_PROBE = "clip_benchmark"  # the features label of CLIP_benchmark's own probe (its AdamW protocol)


@dataclass(frozen=True)
class ScoreRecord:
    """One result with every metric it has, labelled by what its job asked for: (model, pretrained, dataset,
    source of the data, protocol, prompts)."""

    model: str
    pretrained: str
    dataset: str
    prompts: str
    main_metric: str
    metrics: Mapping[str, float]
    run_id: str = ""
    source: str = EXTERNAL_SOURCE
    protocol: str = ""
    task: str = ""
    head: str = ZEROSHOT
    k_shot: str = NOT_APPLICABLE  # "all", or the number of examples per class, for a probe
    seed: str = NOT_APPLICABLE
    features: str = ""            # a probe's features: pre_projection or embedding
    score_run: str = ""           # the score run holding per-sample outcomes and bootstrap replicates
    language: str = ENGLISH       # the class names' and templates' language
    # The job run's tags: the stage runs it used (`run.<stage>`), a checkpoint's position (`checkpoint_*`).
    tags: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def identity(self) -> tuple[str, ...]:
        """What tells two results apart: one seed of a probe is not another's."""
        return (self.model, self.pretrained, self.dataset, self.source, self.protocol, self.prompts,
                self.head_label, self.seed, self.language)

    @property
    def head_label(self) -> str:
        """`zeroshot`, `linear_probe` (the full probe) or `linear_probe 4-shot`, with `(embedding)` when a probe
        used CLIP_benchmark's features instead of the paper's, `(clip_benchmark)` when it is CLIP_benchmark's own
        probe (a result file's): a table row, whatever the seed."""
        if self.head != LINEAR_PROBE:
            return self.head
        label = self.head if self.k_shot in (ALL_SHOTS, NOT_APPLICABLE) else f"{self.head} {self.k_shot}-shot"
        return f"{label} ({self.features})" if self.features in ("embedding", CLIP_BENCHMARK_PROBE) else label

    @property
    def is_external(self) -> bool:
        return self.source == EXTERNAL_SOURCE

    @property
    def is_clip_benchmark_probe(self) -> bool:
        return self.head == LINEAR_PROBE and self.features == CLIP_BENCHMARK_PROBE

    @property
    def units(self) -> float:
        """The number of resampled units (test samples, images, games); NaN for a result file that does not say."""
        for name in ("n", "num_samples", "num_images", "num_games"):  # `n` since intervals; the others before
            if name in self.metrics:
                return float(self.metrics[name])
        return math.nan

    def value(self, metric: str) -> float:
        """`metric`, or this dataset's main metric for `main`; NaN when absent."""
        name = self.main_metric if metric == "main" else metric
        return float(self.metrics.get(name, math.nan))


# -- MLflow: job runs ------------------------------------------------------------------------------------
def _from_job_run(run) -> ScoreRecord:
    return _record(run.info.run_id, run.data.tags, run.data.metrics)


def _record(run_id: str, tags: Mapping[str, str], metrics: Mapping[str, float]) -> ScoreRecord:
    values = {real_metric_name(name): value for name, value in metrics.items()}
    return ScoreRecord(tags["model"], tags["pretrained"], tags["dataset"], tags["prompts"],
                       tags.get("main_metric", "acc1"), values, run_id, tags.get("source", "local"),
                       tags.get("protocol", ""), tags.get("task", ""), tags.get("head", ZEROSHOT),
                       tags.get("k_shot", NOT_APPLICABLE), tags.get("seed", NOT_APPLICABLE), tags.get("features", ""),
                       tags.get("run.score", ""), tags.get("language", ENGLISH), dict(tags))


def from_runs(store: TrackingStore, run_ids: Iterable[str]) -> list[ScoreRecord]:
    """Records from the job runs of one sweep, read from the store's index (a run it lacks, from the store)."""
    from pipeline.store.index import StoreIndex

    run_ids = list(run_ids)
    found = StoreIndex.of(store).fetched(run_ids)
    return [_record(run_id, found[run_id].tags, found[run_id].metrics) if run_id in found else
            _from_job_run(store.client.get_run(run_id)) for run_id in run_ids]


def latest_in_store(store: TrackingStore) -> list[ScoreRecord]:
    """The newest FINISHED job run for each (model, pretrained, dataset, source, protocol, prompts, head, seed), read
    from the store's index, brought up to date first (`store.index`)."""
    from pipeline.store.index import StoreIndex

    index = StoreIndex.of(store)
    index.refresh()
    newest: dict[tuple[str, ...], ScoreRecord] = {}
    for run in index.job_runs():
        record = _record(run.run_id, run.tags, run.metrics)
        newest.setdefault(record.identity, record)
    return list(newest.values())


def latest_in_store_searched(store: TrackingStore) -> list[ScoreRecord]:
    """`latest_in_store` through MLflow's search, run by run: what the index must agree with (tested)."""
    runs = search_all(store, f"tags.stage = '{JOB_STAGE}' and attributes.status = 'FINISHED'",
                      ["attributes.start_time DESC"])
    newest: dict[tuple[str, ...], ScoreRecord] = {}
    for record in map(_from_job_run, runs):
        newest.setdefault(record.identity, record)
    return list(newest.values())


# -- files written elsewhere ------------------------------------------------------------------------------
def _task(dataset: str, metrics: Mapping[str, float], stated: str | None = None) -> str:
    entry = catalog.lookup(dataset)
    if stated or entry is not None:
        return str(stated or entry.task)
    return "zeroshot_retrieval" if "mean_recall@1" in metrics else "zeroshot_classification"


def _main_metric(dataset: str, metrics: Mapping[str, float]) -> str:
    entry = catalog.lookup(dataset)
    if entry is not None:
        return entry.main_metric
    return "mean_recall@1" if "mean_recall@1" in metrics else "acc1"


def _with_mean_recall(metrics: dict[str, float]) -> dict[str, float]:
    # clip_benchmark logs recall@k only; DataComp's main retrieval metric is the mean of the two at k=1.
    if "mean_recall@1" not in metrics and {"image_retrieval_recall@1", "text_retrieval_recall@1"} <= set(metrics):
        metrics["mean_recall@1"] = 0.5 * (metrics["image_retrieval_recall@1"] + metrics["text_retrieval_recall@1"])
    return metrics


def _numbers(metrics: Mapping) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _with_kinetics_metric(dataset: str, metrics: dict[str, float]) -> dict[str, float]:
    # The CLIP paper scores Kinetics700 by the mean of top-1 and top-5 (Table 9); a result file gives the two.
    if dataset == "kinetics700" and "mean_top1_top5" not in metrics and {"acc1", "acc5"} <= set(metrics):
        metrics["mean_top1_top5"] = 0.5 * (metrics["acc1"] + metrics["acc5"])
    return metrics


def _clip_benchmark_probe(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """CLIP_benchmark's own probe (`--task linear_probe`): its `lp_acc1`, `lp_acc5` and `lp_mean_per_class_recall`
    under the names every other result has, and its `fewshot_k` (-1, its default, or none recorded: the whole train
    split) and seed as a probe's labels."""
    renamed = {name.removeprefix("lp_"): value for name, value in metrics.items() if name.startswith("lp_")}
    shots, seed = metrics.get("fewshot_k", -1.0), metrics.get("seed")
    return {**renamed, **metrics}, {"head": LINEAR_PROBE, "k_shot": ALL_SHOTS if shots < 0 else str(int(shots)),
                                    "seed": NOT_APPLICABLE if seed is None else str(int(seed)),
                                    "features": CLIP_BENCHMARK_PROBE}


def not_json(path: Path, exc: ValueError, expected: str, line: int = 0) -> PipelineError:
    """A result file that is not JSON, in one line: the file, why, and its first bytes (a decoding error's own
    message would carry the whole file)."""
    if isinstance(exc, UnicodeDecodeError):
        why = f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
    else:
        why = f"not JSON ({exc.msg}{f' on line {line}' if line else ''})"
    return PipelineError(f"{path} is {why}; it starts with {first_bytes(path)}; expected {expected}")


def first_bytes(path: Path, limit: int = 100) -> str:
    """A file's first bytes as Python writes them (printable, at most `limit` characters)."""
    with open(path, "rb") as handle:
        shown = repr(handle.read(limit))
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def read_clip_benchmark_json(path: Path) -> ScoreRecord:
    """One `clip_benchmark eval` output: {"dataset", "model", "pretrained", "task", "metrics", ...}."""
    try:
        payload = json.loads(path.read_text())
        dataset = str(payload["dataset"]).removeprefix("wds/")
        dataset = MULTILINGUAL_NAMES.get(dataset, dataset)
        metrics, labels = _numbers(payload["metrics"]), {}
        probe = payload.get("task") == "linear_probe"  # CLIP_benchmark's own probe: its AdamW head
        if probe:
            metrics, labels = _clip_benchmark_probe(metrics)
        metrics = _with_kinetics_metric(dataset, _with_mean_recall(metrics))
        return ScoreRecord(str(payload["model"]), str(payload["pretrained"]), dataset, EXTERNAL_PROMPTS,
                           _main_metric(dataset, metrics), metrics, run_id=str(path),
                           language=str(payload.get("language") or ENGLISH),  # clip_benchmark's cli writes it
                           task="zeroshot_classification" if probe else _task(dataset, metrics, payload.get("task")),
                           **labels)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise not_json(path, exc, "a clip_benchmark result (JSON with dataset, model, pretrained and metrics)") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PipelineError(f"cannot read clip_benchmark result {path}: {exc!r}; expected JSON with dataset, model, "
                            f"pretrained and metrics") from exc


def read_datacomp_jsonl(path: Path, model: str, pretrained: str = "") -> list[ScoreRecord]:
    """DataComp's `eval_results.jsonl`: one {"key", "dataset", "metrics"} line per task, for one model."""
    records, number = [], 0
    try:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            payload = json.loads(line)
            metrics = _with_mean_recall(_numbers(payload["metrics"]))
            key = str(payload["key"])
            records.append(ScoreRecord(model, pretrained, key, EXTERNAL_PROMPTS, _main_metric(key, metrics), metrics,
                                       run_id=f"{path}:{number}", task=_task(key, metrics)))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise not_json(path, exc, "DataComp results (JSON lines with key, dataset and metrics)", number) from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PipelineError(f"cannot read DataComp results {path}: {exc!r}; expected JSON lines with key, dataset "
                            f"and metrics") from exc
    return records


# CLIP_benchmark's benchmark/benchmark.csv: one row per (model, dataset), told apart from other CSVs by its header.
BENCHMARK_CSV_COLUMNS = {"acc1", "acc5", "mean_per_class_recall", "dataset", "model", "pretrained", "task"}


def is_benchmark_csv(path: Path) -> bool:
    try:
        with open(path, newline="") as handle:
            header = set(next(csv.reader(handle), []))
    except (OSError, UnicodeDecodeError):
        return False
    return BENCHMARK_CSV_COLUMNS <= header


def read_benchmark_csv(path: Path) -> list[ScoreRecord]:
    """CLIP_benchmark's `benchmark.csv` (its published results, 13 models x 39 datasets): every metric a row has."""
    records = []
    try:
        with open(path, newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                dataset = row["dataset"].removeprefix("wds/")
                metrics = {k: float(v) for k, v in row.items()
                           if k not in BENCHMARK_CSV_COLUMNS - {"acc1", "acc5", "mean_per_class_recall"}
                           and k != "model_fullname" and v not in ("", None)}
                records.append(ScoreRecord(row["model"], row["pretrained"], dataset, EXTERNAL_PROMPTS,
                                           _main_metric(dataset, metrics), metrics, run_id=f"{path}:{number}",
                                           task=_task(dataset, metrics, row["task"])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"cannot read CLIP_benchmark results {path}: {exc!r}; expected its benchmark.csv "
                            f"columns ({', '.join(sorted(BENCHMARK_CSV_COLUMNS))})") from exc
    return records


def from_directory(results_dir: Path) -> list[ScoreRecord]:
    """Every `*.json` (clip_benchmark), `*.jsonl` (DataComp; the model is its folder's name) and CLIP_benchmark
    `benchmark.csv` below `results_dir` (other CSV files are tables, not results, and are left alone); or one such
    file."""
    results_dir = Path(results_dir)
    if results_dir.is_file():
        files = [results_dir]
    elif results_dir.is_dir():
        files = sorted(results_dir.rglob("*.json")) + sorted(results_dir.rglob("*.jsonl")) + sorted(
            path for path in results_dir.rglob("*.csv") if is_benchmark_csv(path))
    else:
        raise PipelineError(f"results_dir {results_dir} is neither a folder nor a file")
    records: list[ScoreRecord] = []
    for path in files:
        if path.suffix == ".json":
            records.append(read_clip_benchmark_json(path))
        elif path.suffix == ".jsonl":
            records.extend(read_datacomp_jsonl(path, model=path.parent.name))
        elif path.suffix == ".csv" and is_benchmark_csv(path):
            records.extend(read_benchmark_csv(path))
        else:
            raise PipelineError(f"results_dir={path} is not a result file: give a clip_benchmark *.json, a DataComp "
                                f"*.jsonl, CLIP_benchmark's benchmark.csv, or a folder of them")
    if not records:
        raise PipelineError(f"no *.json (clip_benchmark), *.jsonl (DataComp) or benchmark.csv results under "
                            f"{results_dir}")
    return records


# -- bootstrap replicates of a record's score ---------------------------------------------------------------
@dataclass(frozen=True)
class Bootstrap:
    """A score's bootstrap replicates by metric, and the digest of its sample order (pairs must share it)."""

    replicates: Mapping[str, np.ndarray]
    order: str = ""


NO_BOOTSTRAP = Bootstrap({})
_READERS = 8  # threads reading replicate files: downloads and checksums wait on I/O


def replicate_loader(store: TrackingStore, prefetch: Iterable[ScoreRecord] = ()) -> Callable[[ScoreRecord], Bootstrap]:
    """`load(record)`: its score run's bootstrap replicates (checksums verified), each score run downloaded once;
    none for result files and for scores computed before intervals existed. The `prefetch` records' are read at
    once: their score runs' tags from the store's index and their files in threads (a table over a whole suite
    reads thousands)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.store.index import StoreIndex

    loaded: dict[str, Bootstrap | PipelineError] = {}

    def read(run_id: str, where: artifacts.Location) -> Bootstrap:
        try:
            arrays = artifacts.load_arrays(where, ("bootstrap", "bootstrap_metrics"), store.uri)
        except (artifacts.CorruptArtifact, artifacts.ArtifactUnavailable) as exc:
            raise PipelineError(f"the bootstrap replicates of score run {run_id} cannot be read ({exc}); rerun its "
                                f"job: the score is recomputed from its cached inputs") from exc
        return NO_BOOTSTRAP if arrays is None else Bootstrap(
            dict(zip(map(str, arrays["bootstrap_metrics"]), arrays["bootstrap"])), where.tags.get("sample_order", ""))

    def kept(run_id: str, where: artifacts.Location) -> Bootstrap | PipelineError:
        """A run's replicates, or why they cannot be read: raised when a layout asks for them, so one unreadable
        run costs the reports that read it, not every other."""
        try:
            return read(run_id, where)
        except PipelineError as exc:
            return exc

    wanted = list(dict.fromkeys(r.score_run for r in prefetch if r.score_run))
    if wanted:
        indexed = StoreIndex.of(store).fetched(wanted)
        located = {run_id: run.location for run_id, run in indexed.items() if run.artifact_uri is not None}
        with ThreadPoolExecutor(_READERS) as pool:
            loaded.update(zip(located, pool.map(kept, located, located.values())))

    def load(record: ScoreRecord) -> Bootstrap:
        if not record.score_run:
            return NO_BOOTSTRAP
        if record.score_run not in loaded:
            run = store.client.get_run(record.score_run)
            loaded[record.score_run] = read(record.score_run, artifacts.Location.of(run))
        found = loaded[record.score_run]
        if isinstance(found, PipelineError):
            raise found
        return found

    return load
