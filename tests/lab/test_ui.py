"""Links into the MLflow UI and the saved views of the job runs; and `make ui` read by a real browser in a fresh
profile (MLflow 3.17 opens GenAI pages unless told otherwise): the link it prints opens the latest sweep's job runs
in the results table's order, with what each ran and its main metric with its interval as columns; the sweep's
report.html renders whole; a table built after `make ui` links to the port it serves; the aggregate run's plot shows
on its artifact page. Screenshots: outputs/test_artifacts/ui/ (printed)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from pipeline.lab import ui
from pipeline.store import links, tracking
from tests import browser
from tests.conftest import ASSETS, REPO, asset_overrides, run_pipeline

UI_LINE = re.compile(r"^MLflow UI: (http://127\.0\.0\.1:\d+)/#/experiments/(\w+)/runs\?workflowType=machine_learning"
                     r"&viewStateShareKey=([\w-]+)$", re.M)
ARTIFACTS = ASSETS / "test_artifacts" / "ui"


def test_prepare_marks_the_experiment_saves_the_jobs_view_and_records_where_it_serves(store):
    client = store.client
    tags = {"stage": "job", "model": "ViT-B-32", "dataset": "cars", "prompts": "dataset", "main_metric": "acc1",
            "pretrained": "openai"}
    for seed in ("0", "1"):
        job = client.create_run(store.experiment_id, tags={**tags, "seed": seed}).info.run_id
        for key, value in (("acc1", 0.5), ("ci_low/acc1", 0.4), ("ci_high/acc1", 0.6), ("n", 480)):
            client.log_metric(job, key, value)
    client.log_metric(client.create_run(store.experiment_id, tags={"stage": "score"}).info.run_id, "loss", 1.0)
    assert ui.prepare(store, "http://127.0.0.1:5001") == ui.JOBS_VIEW  # no sweep has a view yet
    tags = client.get_experiment(store.experiment_id).tags
    assert tags[tracking.EXPERIMENT_KIND[0]] == tracking.EXPERIMENT_KIND[1]
    assert links.ui_base(client, store.experiment_id, "http://127.0.0.1:5000") == "http://127.0.0.1:5001"
    # What each job ran (the seed varies, the weights do not), then the main metric beside its interval.
    columns = ["tags.`model`", "tags.`dataset`", "tags.`prompts`", "tags.`seed`", "metrics.`acc1`",
               "metrics.`ci_low/acc1`", "metrics.`ci_high/acc1`"]
    assert json.loads(tags[links.SHARED_VIEW_TAG + ui.JOBS_VIEW]) == {
        "searchFilter": "tags.stage = 'job'", "orderByKey": links.BY_RUN_NAME, "orderByAsc": True,
        "selectedColumns": columns, "columnOrder": [links.RUN_NAME_COLUMN, *columns],
        "columnWidths": {links.RUN_NAME_COLUMN: links.RUN_NAME_WIDTH, **dict.fromkeys(columns, links.COLUMN_WIDTH)}}
    sweep = client.create_run(store.experiment_id, tags={"stage": "sweep"}).info.run_id
    links.save_job_view(client, store.experiment_id, links.sweep_view_name(sweep), links.JOB_FILTER)
    assert ui.prepare(store) == links.sweep_view_name(sweep)  # `make ui` opens on the latest sweep's jobs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def make_ui_command(port: int) -> list[str]:
    # `-o` keeps make from reinstalling .venv/ should pyproject.toml be newer; PY is the interpreter running the tests.
    return ["make", "--no-print-directory", "-o", ".venv/.installed", "ui", f"PY={sys.executable}", f"PORT={port}",
            "ARGS=open=false"]


@contextmanager
def make_ui(workdir: Path, port: int, timeout_s: float = 120) -> Iterator[tuple[str, str, str]]:
    """`make ui` on the store under `workdir` until the block ends; yields the UI's address, the experiment id and
    the view its printed link opens."""
    env = {**os.environ, "CLIP_TABLES_OUTPUTS": str(workdir / "outputs")}
    output = workdir / "make-ui.out"
    with open(output, "w") as sink:
        # A session of its own: the block ends by sending SIGTERM to make and `python -m pipeline.lab.ui` together.
        process = subprocess.Popen(make_ui_command(port), cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not (found := UI_LINE.search(output.read_text())):
            assert process.poll() is None, f"make ui exited with {process.returncode}:\n{output.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"make ui printed no URL in {timeout_s:.0f} s:\n{output.read_text()}"
            time.sleep(0.2)
        yield found.group(1), found.group(2), found.group(3)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def js_number(value: float) -> str:
    """A metric as the UI prints it (JavaScript's shortest round-trip form, as Python's repr, but `1` for 1.0)."""
    text = repr(value)
    return text.removesuffix(".0")


# The runs table as the UI lays it out: its column keys in order, and each row's cells by key, rows in order.
GRID = """() => {
  const columns = [...document.querySelectorAll('.ag-header-row-column .ag-header-cell')]
    .sort((a, b) => a.getBoundingClientRect().left - b.getBoundingClientRect().left).map((c) => c.getAttribute('col-id'));
  const rows = {};
  for (const row of document.querySelectorAll('.ag-row')) {
    const at = row.getAttribute('row-index');
    rows[at] = rows[at] || {};
    for (const cell of row.querySelectorAll('.ag-cell')) rows[at][cell.getAttribute('col-id')] = cell.textContent.trim();
  }
  return {columns, rows: Object.keys(rows).sort((a, b) => a - b).map((at) => rows[at])};
}"""


@pytest.mark.slow
def test_make_ui_opens_the_sweeps_jobs_with_their_results_and_reports_link_to_the_port_served(
        tmp_path, shapes_root, tiny_checkpoint):
    # Swept as `dataset,classname`: the results table keeps that order, which sorting by run name would reverse.
    sweep = run_pipeline(tmp_path, "-m", *asset_overrides(shapes_root, tiny_checkpoint), "prompts=dataset,classname")
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    store = tracking.connect(f"sqlite:///{tmp_path}/outputs/mlflow.db", "clip-tables")
    runs = store.client.search_runs([store.experiment_id], max_results=1000)
    jobs = {r.data.tags["prompts"]: r for r in runs if r.data.tags.get("stage") == "job"}
    (aggregate,) = [r for r in runs if r.data.tags.get("stage") == "aggregate"]
    (sweep_run,) = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    [report] = (tmp_path / "outputs" / "multirun").glob("*/*/report.html")
    assert [jobs[p].data.tags[links.TABLE_ROW_TAG] for p in ("dataset", "classname")] == ["00000", "00001"]

    port = free_port()
    with browser.chromium_or_skip() as chromium, make_ui(tmp_path, port) as (base, experiment_id, view):
        assert experiment_id == store.experiment_id and view == links.sweep_view_name(sweep_run.info.run_id)
        assert store.client.get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND[0]] == tracking.EXPERIMENT_KIND[1]

        # The printed link: the sweep's job runs, in the table's order, each with what it ran and its interval.
        chromium.window = (2400, 1000)  # wide enough for every column (the grid draws only the ones in view)
        with chromium.page(links.runs_url(base, experiment_id, view=view)) as (tab, _):
            tab.wait_for_selector(".ag-row", timeout=60_000)
            tab.wait_for_function("() => document.querySelectorAll('.ag-row .ag-cell').length > 8", timeout=60_000)
            grid = tab.evaluate(GRID)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(ARTIFACTS / "sweep_view.png"))
        print(f"screenshot: {ARTIFACTS / 'sweep_view.png'}")
        wanted = ["tags.`model`", "tags.`dataset`", "tags.`prompts`", "metrics.`acc1`", "metrics.`ci_low/acc1`",
                  "metrics.`ci_high/acc1`"]
        assert [c for c in grid["columns"] if c in wanted] == wanted, grid["columns"]
        assert grid["columns"].index(links.RUN_NAME_COLUMN) < grid["columns"].index(wanted[0])
        assert [row["tags.`prompts`"] for row in grid["rows"]] == ["dataset", "classname"]
        for row in grid["rows"]:
            job = jobs[row["tags.`prompts`"]]
            for metric in ("acc1", "ci_low/acc1", "ci_high/acc1"):
                assert row[f"metrics.`{metric}`"] == js_number(job.data.metrics[metric]), (metric, row)

        # Every job run, however nested: the view `make ui` saves beside it.
        expected = [text for job in jobs.values() for text in (job.info.run_name, js_number(job.data.metrics["acc1"]))]
        shown = browser.visible_text(chromium.dom(links.runs_url(base, experiment_id, view=ui.JOBS_VIEW),
                                                  lambda page: all(t in browser.visible_text(page) for t in expected)))
        assert all(text in shown for text in expected), (expected, shown[:2000])

        # The sweep's own page renders whole, and a table built now links to the port `make ui` serves.
        chromium.window = browser.WINDOW
        rendered = chromium.render(report.as_uri(), ARTIFACTS / "sweep_report.png")
        assert rendered.problems == [], rendered.problems
        tables = run_pipeline(tmp_path, module="pipeline.aggregate")
        assert tables.returncode == 0, tables.stderr[-2000:]
        page = (tmp_path / "outputs" / "tables" / "per_prompts.html").read_text()
        assert f'href="{base}/#/experiments/{experiment_id}/runs/' in page and ":5000/" not in page

        # The aggregate run's artifact page renders the plot (fetched into a blob: URL).
        plot = re.compile(r'<img alt="heatmap\.png" src="blob:')
        artifact_page = chromium.dom(links.run_url(base, experiment_id, aggregate.info.run_id, "heatmap.png"),
                                     lambda page: bool(plot.search(page)))
        assert plot.search(artifact_page), browser.visible_text(artifact_page)[:2000]

        # Against a server MLflow prints "View run ... / View experiment ..." as a run ends, unless told not to:
        # importing the pipeline tells it (as every job does); the variable set to false brings the lines back.
        ending = ("import pipeline, sys; from mlflow import MlflowClient; client = MlflowClient(sys.argv[1]); "
                  "client.set_terminated(client.create_run(sys.argv[2], tags={'stage': 'test'}).info.run_id)")
        for value, printed in (("", False), ("false", True)):
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"}
            ended = subprocess.run([sys.executable, "-c", ending, base, experiment_id], capture_output=True, text=True,
                                   timeout=120, env={**env, **({"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": value}
                                                             if value else {})}, cwd=REPO)
            assert ended.returncode == 0, ended.stderr[-2000:]
            assert ("View run" in ended.stdout) == printed, ended.stdout

        # A second UI on the same port: one line saying which port and how to choose another.
        busy = subprocess.run(make_ui_command(port), cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "CLIP_TABLES_OUTPUTS": str(tmp_path / "outputs")})
        assert busy.returncode != 0
        assert re.search(rf"^Error: port {port} .*`make ui PORT=\.\.\.`", busy.stderr, re.M), busy.stderr[-2000:]

    deadline = time.monotonic() + 30
    while listening(port):  # SIGTERM stops the UI server with its runner
        assert time.monotonic() < deadline, f"the MLflow UI still listens on port {port} after SIGTERM"
        time.sleep(0.2)
