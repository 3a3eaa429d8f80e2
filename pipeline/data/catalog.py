"""The dataset catalog as data: each conf/dataset config's key, table column, task and main metric, and the suites."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import yaml
from omegaconf import OmegaConf

from pipeline import CONF_DIR


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    column: str | None
    task: str
    main_metric: str
    source: str | None = None  # whose copy the config reads by default: DataComp's evaluation reads this one
    metrics: tuple[str, ...] = ()  # beyond its task's: the dataset's group and extra metrics (WILDS, fairness)


@lru_cache(maxsize=1)
def entries() -> dict[str, CatalogEntry]:
    """Every dataset config by key (its `name`), read without resolving roots."""
    found: dict[str, CatalogEntry] = {}
    for path in sorted((CONF_DIR / "dataset").rglob("*.yaml")):
        # plain YAML through libyaml where PyYAML has it: OmegaConf takes 5 ms a file, and nothing is resolved here
        node = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if node.get("name") in (None, "???"):
            continue
        metrics = tuple(group["name"] for group in node.get("group_metrics") or ()) + tuple(node.get("extra_metrics") or ())
        found[node["name"]] = CatalogEntry(node["name"], node.get("column"), node["task"], node["main_metric"],
                                           node.get("source"), metrics)
    return found


@lru_cache(maxsize=None)
def suite(name: str) -> tuple[str, ...]:
    """The dataset keys a suite sweeps, in its order (read once: tables ask for every record)."""
    node = OmegaConf.load(CONF_DIR / "suite" / f"{name}.yaml")
    return tuple(str(node.hydra.sweeper.params.dataset).split(","))


def lookup(dataset: str) -> CatalogEntry | None:
    """A catalog entry by key, accepting clip_benchmark's `wds/` prefix."""
    return entries().get(dataset.removeprefix("wds/"))


@lru_cache(maxsize=1)
def generation_defaults() -> dict:
    """`conf/generation/clip_benchmark.yaml`: open_clip's CoCa.generate defaults, as clip_benchmark calls it (a
    captioning result's `head` names the settings that differ from these)."""
    return yaml.safe_load((CONF_DIR / "generation" / "clip_benchmark.yaml").read_text())
