"""`make ui` (`python -m pipeline.ui [port=N] [open=false]`): the MLflow UI on the tracking store, links into it,
and a saved view of the job runs with their metrics.

MLflow 3.17's UI shows an experiment as the browser's "workflow type" says (GenAI unless the browser chose
otherwise); `workflowType=machine_learning` in a link selects the classic runs view, so every link here carries it.
"""
from __future__ import annotations

import json
import os
import sys
import urllib.parse
import webbrowser
from pathlib import Path
from typing import Sequence

import hydra
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from pipeline import PipelineError, tracking
from pipeline.cli import reported
from pipeline.results import JOB_STAGE
from pipeline.server import ServerSettings, ensure_port_free, serving, stop_on_sigterm, wait_until_stopped
from pipeline.tracking import TrackingStore

WORKFLOW_TYPE = "machine_learning"
# The UI's "Run Name" sort. Sorted by creation time (the UI's default) the UI also fetches the parents of the
# runs a filter matches and nests the matches under them, collapsed; sorted any other way it lists them flat.
BY_RUN_NAME = "tags.`mlflow.runName`"
# A view as the UI's Share button saves one: search facets and the columns shown, in an experiment tag named
# with this prefix, opened with `viewStateShareKey=<name>`. A link's own parameters cannot choose columns.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
JOB_FILTER = f"tags.stage = '{JOB_STAGE}'"
JOBS_VIEW = "jobs"  # every job run with its metrics; `python -m pipeline.ui` saves it
# MLflow's job runner (GenAI judges and online scoring) starts seven worker processes beside the server; the runs
# view needs none of them.
UI_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def runs_url(base: str, experiment_id: str, *, search_filter: str | None = None, order_by: str | None = None,
             ascending: bool = True, view: str | None = None) -> str:
    """The experiment's runs table, e.g. `runs_url(base, "1", search_filter="tags.stage = 'job'")`.

    Args:
        base: where the UI is, e.g. http://127.0.0.1:5000.
        experiment_id: the experiment.
        search_filter: an MLflow search filter; the runs it matches are listed flat, children included.
        order_by: a column key such as "metrics.`acc1`"; by run name when a filter is given.
        ascending: the order's direction.
        view: a view `share_view` saved (its own filter, order and columns); not with a filter or an order,
            since the UI ignores a view in a link that has either.
    """
    if view and (search_filter or order_by):
        raise ValueError("a view brings its own filter and order; pass either a view or search_filter/order_by")
    params = {"workflowType": WORKFLOW_TYPE}
    if view:
        params["viewStateShareKey"] = view
    if search_filter:
        params["searchFilter"] = search_filter
        order_by = order_by or BY_RUN_NAME
    if order_by:
        params.update(orderByKey=order_by, orderByAsc=str(ascending).lower())
    query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def run_url(base: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """One run's page, or with `artifact` (a path inside the run's artifacts) its artifact view showing that file."""
    path = f"#/experiments/{experiment_id}/runs/{run_id}"
    if artifact:
        path += f"/artifacts/{urllib.parse.quote(artifact)}"
    return f"{base.rstrip('/')}/{path}?workflowType={WORKFLOW_TYPE}"


def share_view(client: MlflowClient, experiment_id: str, name: str, search_filter: str, columns: Sequence[str],
               order_by: str = BY_RUN_NAME, ascending: bool = True) -> str:
    """Save a view of the runs table in the experiment; returns its name for `runs_url(view=...)`.

    Args:
        columns: column keys to show, e.g. "metrics.`acc1`", "params.`batch_size`", "tags.`dataset`".
        order_by: anything but the creation time, which would nest the matches under their parents, collapsed.
    """
    state = {"searchFilter": search_filter, "orderByKey": order_by, "orderByAsc": ascending,
             "selectedColumns": list(columns)}
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + name, json.dumps(state))
    return name


def job_metric_columns(client: MlflowClient, experiment_id: str, search_filter: str = JOB_FILTER,
                       runs: int = 1000) -> list[str]:
    """The metric columns of the latest job runs `search_filter` matches (their headline metrics, intervals, `n`)."""
    found = client.search_runs([experiment_id], search_filter, max_results=runs,
                               order_by=["attributes.start_time DESC"])
    keys = {key for run in found for key in run.data.metrics}
    # Values first, then their intervals (`ci_low/acc1`): the table shows the first columns without scrolling.
    return [f"metrics.`{key}`" for key in sorted(keys, key=lambda key: ("/" in key, key))]


def prepare(store: TrackingStore) -> None:
    """Mark the experiment as classic model development and save the view of its job runs."""
    client = store.client
    client.set_experiment_tag(store.experiment_id, *tracking.EXPERIMENT_KIND)
    share_view(client, store.experiment_id, JOBS_VIEW, JOB_FILTER, job_metric_columns(client, store.experiment_id))


def open_in_browser(url: str) -> bool:
    """Open `url` where a graphical browser can show it; a console browser (lynx) would take over the terminal
    and cannot run the UI's JavaScript anyway."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


def ensure_ui_port_free(port: int) -> None:
    try:
        ensure_port_free("127.0.0.1", port, "the MLflow UI's", "port")
    except PipelineError:
        raise PipelineError(f"port {port} on 127.0.0.1 is in use (another `make ui`, or `make server`?); choose "
                            f"another with `make ui PORT=...` (`python -m pipeline.ui port=...`)") from None


def announce(base: str, experiment_id: str, open_browser: bool) -> None:
    url = runs_url(base, experiment_id)
    print(f"MLflow UI: {url}", flush=True)
    if open_browser:
        open_in_browser(url)


@hydra.main(config_path="../conf", config_name="ui", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    remote = cfg.tracking.uri.startswith(("http://", "https://"))
    if not remote:
        ensure_ui_port_free(int(cfg.port))
    store = tracking.connect_cfg(cfg.tracking)
    prepare(store)
    if remote:  # a tracking server serves its own UI
        announce(cfg.tracking.get("ui_url") or cfg.tracking.uri, store.experiment_id, cfg.open)
        return
    artifacts = cfg.tracking.get("artifact_location") or str(Path(cfg.paths.outputs) / "mlartifacts")
    settings = ServerSettings(store.uri, str(artifacts), "127.0.0.1", int(cfg.port), workers=1, env=UI_SERVER_ENV)
    stop_on_sigterm()
    with serving(settings, Path(cfg.log)) as server:
        announce(server.url, store.experiment_id, cfg.open)
        status = wait_until_stopped(server.process)
    if status is not None:
        raise PipelineError(f"the MLflow UI exited with status {status}; see {cfg.log}")


if __name__ == "__main__":
    main()
