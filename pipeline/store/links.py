"""Links into the MLflow UI and saved views of its runs table, for the reports and for `make ui`.

MLflow 3.17's UI shows an experiment as the browser's "workflow type" says (GenAI unless the browser chose
otherwise); `workflowType=machine_learning` in a link selects the classic runs view, so every link here carries it.
"""
from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Sequence

from pipeline.store.tracking import JOB_STAGE

if TYPE_CHECKING:  # MLflow loads where the store is used: a table of result files never imports it
    from mlflow.tracking import MlflowClient

WORKFLOW_TYPE = "machine_learning"
# The UI's "Run Name" sort. Sorted by creation time (the UI's default) the UI also fetches the parents of the
# runs a filter matches and nests the matches under them, collapsed; sorted any other way it lists them flat.
BY_RUN_NAME = "tags.`mlflow.runName`"
# A view as the UI's Share button saves one: search facets and the columns shown, in an experiment tag named
# with this prefix, opened with `viewStateShareKey=<name>`. A link's own parameters cannot choose columns.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
JOB_FILTER = f"tags.stage = '{JOB_STAGE}'"


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
