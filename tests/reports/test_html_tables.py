"""Tables as the pages show them: cells as their files print them, and wide tables made to fit (a value wraps above
its interval, a path after its /, `mean ± std` pairs, empty columns left out, wide and short tables turned)."""
from __future__ import annotations

import pandas as pd

from pipeline.reports import html_tables


def test_a_csv_cell_shows_as_printed_unless_longer_than_four_decimals():
    assert [html_tables.printed(c) for c in ("91.7", "0.9123", "1", "", "incomplete (21/38)", "0.88 [0.7, 0.9]")] == \
        ["91.7", "0.9123", "1", "", "incomplete (21/38)", "0.88 [0.7, 0.9]"]
    assert [html_tables.printed(c) for c in ("0.912346", "1e-05", "0.51234")] == ["0.9123", "0.0000", "0.5123"]


def test_wide_tables_pair_their_spreads_and_turn_when_short():
    shots = pd.DataFrame({"model": ["m"], "1-shot": ["0.7340"], "1-shot std": ["0.0589"], "full probe": ["0.9"],
                          "empty": [""]})
    assert list(html_tables.with_spread(shots).columns) == ["model", "1-shot ± std", "full probe", "empty"]
    assert html_tables.with_spread(shots).loc[0, "1-shot ± std"] == "0.7340 ± 0.0589"
    wide = pd.DataFrame({"name": ["A", "B"], "pretrained": ["x", "y"],
                         **{f"dataset {i}": [f"0.{i:04d}", "0.5"] for i in range(html_tables.TURNED_COLUMNS)}})
    text = html_tables.frame_html(wide)
    assert "shown turned" in text and text.count("<tr>") == 1 + html_tables.TURNED_COLUMNS
    assert "<th>name / pretrained</th><th>A / x</th><th>B / y</th>" in text  # named by the labels
    assert "shown turned" not in html_tables.frame_html(pd.concat([wide] * 20))  # as many rows as columns: as it is
    cells = html_tables.frame_html(pd.DataFrame({"pretrained": ["run/step_300.pt"],
                                                 "acc1": ["0.8917 [0.8646, 0.9187]"], "never": [""]}))
    assert "run/<wbr>step_<wbr>300.pt" in cells  # a path wraps after / and _, nowhere else
    assert "<td class=num><span>0.8917</span> <span>[0.8646, 0.9187]</span></td>" in cells  # only before [
    assert "never" not in cells  # a column empty in every row is left out (its file keeps it)
