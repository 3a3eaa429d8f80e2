"""Parameter counts of open_clip architectures, counted once and remembered.

A table's `params (M)` column is cosmetic, yet building a model to count it costs seconds per architecture, and a
Hugging Face text tower first asks the Hub for its config (about 24 s each on a node without internet). So counts
are made in one child process for every architecture a table lacks, with the Hub offline (a tower whose config is
not cached already is not counted), and kept in a small JSON file per open_clip version: the aggregate itself
never imports torch and never touches the network.

`python -m pipeline.models.params ARCH...` prints the counts as JSON (what the parent reads).
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from pipeline import user_cache

log = logging.getLogger(__name__)

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def counts_file() -> Path:
    """Where counts are remembered: beside the checkpoints' remembered hashes, in the user's cache."""
    return user_cache() / "param_counts.json"


def count_m(arch: str) -> float | None:
    """Parameters in millions, counted on the meta device (no weights are loaded); None where the model cannot
    be built here (unknown to open_clip, or a text tower whose config is not in the Hub cache)."""
    import open_clip
    import torch

    from pipeline.models.loading import register_project_architectures

    register_project_architectures()
    if arch not in open_clip.list_models():
        return None
    try:
        with torch.device("meta"):
            model = open_clip.create_model(arch, pretrained=None, device="meta")
    except Exception as exc:  # a cosmetic column never aborts a table
        log.warning("params (M) of %s not counted (%s)", arch, str(exc).splitlines()[0] if str(exc) else exc)
        return None
    return sum(p.numel() for p in model.parameters()) / 1e6


def parameter_counts(archs: set[str], remembered: Path | None = None) -> dict[str, float]:
    """Counts in millions for `archs` (NaN where none can be made): remembered ones are read, the others counted
    together in one offline child process and remembered, failures included (delete the file to count again)."""
    path = remembered or counts_file()
    key = f"open_clip {version('open_clip_torch')}"
    known: dict[str, dict[str, float | None]] = _read(path)
    counts = known.get(key, {})
    missing = sorted(set(archs) - set(counts))
    if missing:
        counts = {**counts, **_count_in_child(missing)}
        _write(path, {**known, key: counts})
    return {arch: math.nan if counts.get(arch) is None else counts[arch] for arch in archs}


def _count_in_child(archs: list[str]) -> dict[str, float | None]:
    # A child keeps torch and open_clip out of this process and sees the Hub offline from its first import
    # (huggingface_hub reads HF_HUB_OFFLINE once, when it is imported).
    log.info("counting the parameters of %d architecture(s) once: %s", len(archs), ", ".join(archs))
    done = subprocess.run([sys.executable, "-m", __name__, *archs], capture_output=True, text=True,
                          env={**os.environ, **OFFLINE}, timeout=1800)
    if done.returncode != 0:
        log.warning("params (M) not counted: %s", (done.stderr.strip().splitlines() or ["no output"])[-1])
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or damaged by hand: counted again
        return {}


def _write(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(data, indent=1, sort_keys=True))
        partial.replace(path)  # two aggregates at once never leave half a file
    except OSError as exc:
        log.warning("params (M) counts not remembered in %s (%s)", path, exc)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print(json.dumps({arch: count_m(arch) for arch in sys.argv[1:]}))
