"""Report plots are drawn once per input: equal numbers are copied from the plot cache, changed ones redrawn."""
import pandas as pd

from pipeline.reports import heatmap, plots


def matrix(value: float) -> pd.DataFrame:
    return pd.DataFrame({"d1": [value, 0.5], "mean": [value, 0.5]}, index=["A", "B"])


def test_equal_inputs_are_copied_and_changed_ones_drawn(tmp_path, monkeypatch):
    drawn: list[str] = []
    real = heatmap.plot

    def counting(values, metric, path):
        drawn.append(path.name)
        return real(values, metric, path)

    counting.__qualname__ = real.__qualname__
    cache = tmp_path / "cache"
    first = plots.drawn(cache, counting, matrix(0.1), "acc1", path=tmp_path / "a.png")
    again = plots.drawn(cache, counting, matrix(0.1), "acc1", path=tmp_path / "b.png")
    assert drawn == ["a.png"] and again.read_bytes() == first.read_bytes()
    changed = plots.drawn(cache, counting, matrix(0.2), "acc1", path=tmp_path / "c.png")
    assert changed.read_bytes() != first.read_bytes()
    assert plots.drawn(cache, counting, matrix(0.1), "acc5", path=tmp_path / "d.png").is_file()
    assert plots.drawn(None, counting, matrix(0.1), "acc1", path=tmp_path / "e.png").is_file()
    assert drawn == ["a.png", "c.png", "d.png", "e.png"]
    assert len(list(cache.glob("*.png"))) == 3 and not list(cache.glob("*.partial"))


def test_the_key_reads_numbers_not_object_addresses():
    frame = matrix(0.1)
    key = plots.digest(heatmap.plot, (frame, {"x": frame.copy()}))
    assert key == plots.digest(heatmap.plot, (frame.copy(), {"x": frame}))
    assert key != plots.digest(heatmap.plot, (frame, {"x": matrix(0.3)}))
    assert key != plots.digest(plots.pyplot, (frame, {"x": frame}))  # another drawing
