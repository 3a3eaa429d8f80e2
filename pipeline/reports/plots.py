"""What every report plot shares: matplotlib's file backend, and drawing a plot only when what it shows changed.

A sweep run again over cached results draws the same plots from the same numbers; matplotlib's import and each
figure cost about a second on a CPU. So a plot is kept in a folder keyed by its inputs and the source of the
module that draws it, and copied from there when nothing changed (`drawn`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

PLOT_CACHE = "plot_cache"  # the folder under the outputs root


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only: jobs run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _canonical(value: Any, out: "hashlib._Hash") -> None:
    """Feed a stable rendering of a plot's input to `out`: numbers and labels, never object addresses."""
    if isinstance(value, (pd.DataFrame, pd.Series)):
        out.update(value.to_csv().encode())
    elif isinstance(value, np.ndarray):
        out.update(f"{value.dtype}{value.shape}".encode())
        out.update(np.ascontiguousarray(value).tobytes())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        out.update(type(value).__qualname__.encode())
        for item in dataclasses.fields(value):
            out.update(item.name.encode())
            _canonical(getattr(value, item.name), out)
    elif isinstance(value, Mapping):
        for key in sorted(value, key=repr):
            out.update(repr(key).encode())
            _canonical(value[key], out)
    elif isinstance(value, (list, tuple)):
        out.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _canonical(item, out)
    else:
        out.update(repr(value).encode())


def digest(draw: Callable[..., Path], inputs: tuple) -> str:
    out = hashlib.sha256(Path(inspect.getfile(draw)).read_bytes())  # a changed drawing code draws again
    out.update(draw.__qualname__.encode())
    _canonical(inputs, out)
    return out.hexdigest()


def drawn(cache: Path | None, draw: Callable[..., Path], *inputs: Any, path: Path) -> Path:
    """`draw(*inputs, path)`, or a copy of the plot it drew before from equal inputs (kept in `cache`)."""
    if cache is None:
        return draw(*inputs, path)
    kept = cache / f"{digest(draw, inputs)}.png"
    if kept.is_file():
        shutil.copyfile(kept, path)
        return path
    draw(*inputs, path)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        partial = kept.with_name(f"{kept.name}.{os.getpid()}.partial")  # never half a plot served to another sweep
        shutil.copyfile(path, partial)
        partial.replace(kept)
    except OSError:
        pass  # a cache that cannot be written only costs the next sweep a redraw
    return path
