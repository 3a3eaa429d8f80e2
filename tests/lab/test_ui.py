"""Links into the MLflow UI and the saved view of the job runs; and `make ui` read by a real browser in a fresh
profile (MLflow 3.17 opens GenAI pages unless told otherwise): the runs table, the job runs with their metrics, and
the aggregate run's plot on its artifact page."""
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

UI_LINE = re.compile(r"^MLflow UI: (http://127\.0\.0\.1:\d+)/#/experiments/(\w+)/runs\?workflowType=machine_learning$",
                     re.M)
SCREENSHOT = ASSETS / "ui_screenshot.png"


def test_prepare_marks_the_experiment_and_saves_the_jobs_view_with_their_metrics(store):
    client = store.client
    job = client.create_run(store.experiment_id, tags={"stage": "job"}).info.run_id
    for key, value in (("acc1", 0.5), ("ci_low/acc1", 0.4), ("n", 480)):
        client.log_metric(job, key, value)
    client.log_metric(client.create_run(store.experiment_id, tags={"stage": "score"}).info.run_id, "loss", 1.0)
    ui.prepare(store)
    tags = client.get_experiment(store.experiment_id).tags
    assert tags[tracking.EXPERIMENT_KIND[0]] == tracking.EXPERIMENT_KIND[1]
    assert json.loads(tags[links.SHARED_VIEW_TAG + ui.JOBS_VIEW]) == {
        "searchFilter": "tags.stage = 'job'", "orderByKey": links.BY_RUN_NAME, "orderByAsc": True,
        "selectedColumns": ["metrics.`acc1`", "metrics.`n`", "metrics.`ci_low/acc1`"]}


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
def make_ui(workdir: Path, port: int, timeout_s: float = 120) -> Iterator[tuple[str, str]]:
    """`make ui` on the store under `workdir` until the block ends; yields the UI's address and experiment id."""
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
        yield found.group(1), found.group(2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


def js_number(value: float) -> str:
    """A metric as the UI prints it (JavaScript's shortest round-trip form, as Python's repr, but `1` for 1.0)."""
    text = repr(value)
    return text.removesuffix(".0")


@pytest.mark.slow
def test_make_ui_shows_job_runs_with_metrics_and_the_aggregate_plot(tmp_path, shapes_root, tiny_checkpoint):
    try:
        chromium = browser.Chromium(browser.ensure_chromium(), tmp_path / "profiles")
    except RuntimeError as exc:
        pytest.fail(f"a browser is needed to read the MLflow UI: {exc}")
    sweep = run_pipeline(tmp_path, "-m", *asset_overrides(shapes_root, tiny_checkpoint), "prompts=classname,dataset")
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    store = tracking.connect(f"sqlite:///{tmp_path}/outputs/mlflow.db", "clip-tables")
    runs = store.client.search_runs([store.experiment_id], max_results=1000)
    jobs = [r for r in runs if r.data.tags.get("stage") == "job"]
    (aggregate,) = [r for r in runs if r.data.tags.get("stage") == "aggregate"]
    top_level = [r.info.run_name for r in runs if tracking.PARENT_TAG not in r.data.tags]
    assert len(jobs) == 2

    port = free_port()
    with make_ui(tmp_path, port) as (base, experiment_id):
        assert experiment_id == store.experiment_id
        assert store.client.get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND[0]] == tracking.EXPERIMENT_KIND[1]

        # The printed URL: the classic runs table (a GenAI page has no "Run Name" column), its top-level runs.
        printed = browser.visible_text(chromium.dom(
            links.runs_url(base, experiment_id), lambda page: "Run Name" in browser.visible_text(page)))
        assert "Run Name" in printed and all(name in printed for name in top_level), printed[:2000]

        # The jobs view: every job run listed flat, however nested, with its headline metric.
        expected = [text for job in jobs for text in (job.info.run_name, js_number(job.data.metrics["acc1"]))]
        jobs_url = links.runs_url(base, experiment_id, view=ui.JOBS_VIEW)
        shown = browser.visible_text(chromium.dom(
            jobs_url, lambda page: all(text in browser.visible_text(page) for text in expected)))
        assert all(text in shown for text in expected), (expected, shown[:2000])
        assert "acc1" in shown
        chromium.screenshot(jobs_url, SCREENSHOT)

        # The aggregate run's artifact page renders the plot (fetched into a blob: URL).
        plot = re.compile(r'<img alt="heatmap\.png" src="blob:')
        artifact_page = chromium.dom(links.run_url(base, experiment_id, aggregate.info.run_id, "heatmap.png"),
                                     lambda page: bool(plot.search(page)))
        assert plot.search(artifact_page), browser.visible_text(artifact_page)[:2000]

        # A second UI on the same port: one line saying which port and how to choose another.
        busy = subprocess.run(make_ui_command(port), cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "CLIP_TABLES_OUTPUTS": str(tmp_path / "outputs")})
        assert busy.returncode != 0
        assert re.search(rf"^Error: port {port} .*`make ui PORT=\.\.\.`", busy.stderr, re.M), busy.stderr[-2000:]

    deadline = time.monotonic() + 30
    while listening(port):  # SIGTERM stops the UI server with its runner
        assert time.monotonic() < deadline, f"the MLflow UI still listens on port {port} after SIGTERM"
        time.sleep(0.2)
