"""The aggregate step's part of explaining: the blog's grid of images × models, drawn from the explain runs a
sweep's jobs used (each job names its run in its `result.json`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.stages.explain.figures import Column, grid, slug
from pipeline.stages.explain.inputs import distinct
from pipeline.store import artifacts
from pipeline.store.tracking import TrackingStore

log = logging.getLogger(__name__)

TITLE = "Relevance maps (images × models)"  # its section of report.html


def rows_of(arrays: Mapping[str, np.ndarray]) -> list[tuple[str, str]]:
    names, captions = [str(n) for n in arrays["image_names"]], [str(c) for c in arrays["captions"]]
    return [(names[i], captions[c]) for i, c in zip(arrays["pair_image"], arrays["pair_caption"])]


def figures_for(columns: Sequence[Column]) -> list[tuple[str, list[tuple[str, str]], str]]:
    """(file stem, rows, title) of each figure: one per caption when captions were given, one figure with every
    image's own caption when each image had one (class prompts)."""
    rows = list(dict.fromkeys(row for column in columns for row in rows_of(column.arrays)))
    captions = list(dict.fromkeys(caption for _, caption in rows))
    images = {name for name, _ in rows}
    if len(rows) == len(images) and len(captions) > 1:  # each image with its own caption
        return [("relevance", rows, "Relevance of each image's caption (gradient-weighted attention rollout)")]
    stems = distinct([f"relevance_{slug(caption)}" for caption in captions])  # "A dog." and "a dog" slug alike
    return [(stem, [row for row in rows if row[1] == caption], f"“{caption}”") for stem, caption in zip(stems, captions)]


def write_grids(store: TrackingStore, jobs: Sequence[dict], out_dir: Path) -> list[Path]:
    """One PNG per figure in `out_dir`; the columns are the jobs' models, in job order."""
    columns = []
    for job in jobs:
        run = store.client.get_run(job["explain_run_id"])
        columns.append(Column(job["label"], artifacts.load(run, store.uri).arrays))
    written = []
    for stem, rows, title in figures_for(columns):
        path = Path(out_dir) / f"{stem}.png"
        path.write_bytes(grid(columns, rows, title))
        written.append(path)
    log.info("relevance grids of %d model(s): %s", len(columns), ", ".join(p.name for p in written))
    return written
