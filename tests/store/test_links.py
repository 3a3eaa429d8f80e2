"""Links into the MLflow UI: the classic runs view, filters listed flat, saved views."""
from __future__ import annotations

import pytest

from pipeline.store import links

BASE = "http://127.0.0.1:5000"


def test_links_open_the_classic_runs_view():
    assert links.runs_url(BASE + "/", "3") == f"{BASE}/#/experiments/3/runs?workflowType=machine_learning"
    assert links.run_url(BASE, "3", "abc") == f"{BASE}/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert (links.run_url(BASE, "3", "abc", "plots/heat map.png")
            == f"{BASE}/#/experiments/3/runs/abc/artifacts/plots/heat%20map.png?workflowType=machine_learning")
    assert links.runs_url(BASE, "3", view="jobs").endswith("/runs?workflowType=machine_learning&viewStateShareKey=jobs")


def test_a_filtered_link_is_ordered_so_the_ui_lists_the_matches_flat():
    """Sorted by creation time the UI would nest the matching job runs under their sweep run, collapsed."""
    assert links.runs_url(BASE, "3", search_filter="tags.stage = 'job'") == (
        f"{BASE}/#/experiments/3/runs?workflowType=machine_learning&searchFilter=tags.stage%20%3D%20%27job%27"
        "&orderByKey=tags.%60mlflow.runName%60&orderByAsc=true")
    assert links.runs_url(BASE, "3", order_by="metrics.`acc1`", ascending=False).endswith(
        "&orderByKey=metrics.%60acc1%60&orderByAsc=false")
    with pytest.raises(ValueError, match="either a view"):
        links.runs_url(BASE, "3", view="jobs", search_filter="tags.stage = 'job'")
