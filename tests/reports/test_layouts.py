"""The registry of layouts: one entry per layout with its title and writer, which a sweep draws by itself, and
refusals in one line."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.errors import PipelineError
from pipeline.reports import layouts
from pipeline.reports.results import ScoreRecord
from tests.records import table_record


def test_every_layout_has_a_title_and_the_per_prompt_set_tables_come_first():
    assert list(layouts.LAYOUTS)[0] == "per_prompts"
    assert all(layout.title and layout.name == name for name, layout in layouts.LAYOUTS.items())
    assert {"per_prompts", "compare", "openclip38", "blog", "fewshot", "prompt_gains", "robustness",
            "training_curves", "reproduction"} <= set(layouts.LAYOUTS)


def test_a_sweep_draws_the_layouts_its_results_call_for():
    zero_shot = [table_record("A", "cars", prompts="classname"), table_record("A", "cars", prompts="dataset")]
    assert [layout.name for layout in layouts.sweep_layouts(zero_shot[:1])] == ["per_prompts", "reproduction"]
    assert [layout.name for layout in layouts.sweep_layouts(zero_shot)] == ["per_prompts", "prompt_gains",
                                                                            "reproduction"]
    probe = ScoreRecord("A", "tag", "cars", "*", "acc1", {"acc1": 0.5}, source="local", protocol="datacomp",
                        task="zeroshot_classification", head="linear_probe", k_shot="4", seed="0")
    assert "fewshot" in [layout.name for layout in layouts.sweep_layouts(zero_shot[:1] + [probe])]


def test_an_unknown_layout_lists_the_known_ones(tmp_path):
    with pytest.raises(PipelineError, match="unknown layout 'tabel'; use one of per_prompts, compare"):
        layouts.write_layout("tabel", layouts.Request([], "acc1", tmp_path))


def test_layouts_that_pair_results_refuse_result_files(tmp_path):
    with pytest.raises(PipelineError, match="layout=compare reads bootstrap replicates"):
        layouts.write_layout("compare", layouts.Request([table_record("A", "cars")], "acc1", tmp_path))


def test_a_table_is_written_as_csv_and_markdown_under_its_heading(tmp_path):
    files, markdown = layouts.table_files(pd.DataFrame({"model": ["A"], "cars": [0.51234]}), tmp_path / "t.v2.csv",
                                          "acc1")
    assert [f.name for f in files] == ["t.v2.csv", "t.v2.md"]
    assert markdown.startswith("### acc1\n") and "0.5123" in markdown
    assert (tmp_path / "t.v2.md").read_text() == markdown
