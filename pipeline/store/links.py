"""Links into the MLflow UI and saved views of its runs table, for the reports and for `make ui`.

MLflow 3.17's UI shows an experiment as the browser's "workflow type" says (GenAI unless the browser chose
otherwise); `workflowType=machine_learning` in a link selects the classic runs view, so every link here carries it.
"""
from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING, Mapping, Sequence

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
SWEEP_STAGE = "sweep"  # the sweep run's stage tag, as jobs/sweep.py sets it (jobs import the store, not back)
# The UI's column keys: the run name's (pinned first; wide enough for `job:<model>:<dataset>:<prompts>`), and what a
# job run's tags say it ran, in the order the views show them.
RUN_NAME_COLUMN = "attributes.`Run Name`"
RUN_NAME_WIDTH = 270
COLUMN_WIDTH = 95  # a tag's or a metric's: the UI's 100 px default, a little narrower so that more fit
JOB_LABELS = ["model", "pretrained", "dataset", "prompts", "head", "k_shot", "seed"]
ALWAYS_SHOWN = {"model", "dataset", "prompts"}
MAIN_METRIC_TAG = "main_metric"
INTERVAL_PREFIXES = ("ci_low/", "ci_high/")
COUNTS = {"n", "num_samples", "num_classes", "captions", "skipped", "ties"}
# A job run's place in its sweep's results table (zero-padded: the UI sorts tags as text); a sweep's view sorts by it.
TABLE_ROW_TAG = "table_row"
# Where `make ui` last served the store's UI (an experiment tag): the reports written after it link there.
UI_URL_TAG = "clip_tables.ui_url"


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
               order_by: str = BY_RUN_NAME, ascending: bool = True, widths: Mapping[str, int] | None = None) -> str:
    """Save a view of the runs table in the experiment; returns its name for `runs_url(view=...)`.

    Args:
        columns: column keys to show, in this order after the run's name, e.g. "tags.`model`", "metrics.`acc1`".
        order_by: anything but the creation time, which would nest the matches under their parents, collapsed.
        widths: columns' widths in pixels, by key (the run name's is RUN_NAME_COLUMN).
    """
    state = {"searchFilter": search_filter, "orderByKey": order_by, "orderByAsc": ascending,
             "selectedColumns": list(columns), "columnOrder": [RUN_NAME_COLUMN, *columns],
             "columnWidths": dict(widths or {})}
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + name, json.dumps(state))
    return name


def job_columns(labelled: Sequence[tuple[Mapping[str, str], Mapping[str, float]]]) -> list[str]:
    """The columns a view of job runs shows, in this order: what each job ran (model, weights, dataset, prompt set,
    and head, shots and seed where they vary), then each main metric with its 95 % interval beside it; from each
    run's (tags, metrics)."""
    tags = [run_tags for run_tags, _ in labelled]
    shown = [label for label in JOB_LABELS if any(label in t for t in tags)
             and (label in ALWAYS_SHOWN or len({t.get(label) for t in tags}) > 1)]
    metrics = dict.fromkeys(t[MAIN_METRIC_TAG] for t in tags if t.get(MAIN_METRIC_TAG))
    if not metrics:  # runs from before the tag: their metrics, values before intervals
        keys = {key for _, run_metrics in labelled for key in run_metrics}
        metrics = dict.fromkeys(sorted(k for k in keys if "/" not in k and k not in COUNTS))
    columns = [f"tags.`{label}`" for label in shown]
    for metric in metrics:
        columns += [f"metrics.`{prefix}{metric}`" for prefix in ("", *INTERVAL_PREFIXES)]
    return columns


def save_job_view(client: MlflowClient, experiment_id: str, name: str, search_filter: str, order_by: str = BY_RUN_NAME,
                  runs: int = 1000, labelled: Sequence[tuple[Mapping[str, str], Mapping[str, float]]] | None = None
                  ) -> str:
    """A view of the job runs `search_filter` matches with `job_columns`, chosen from `labelled` (each run's tags and
    metrics) where the caller has them, else from the latest `runs` the filter matches."""
    if labelled is None:
        found = client.search_runs([experiment_id], search_filter, max_results=runs,
                                   order_by=["attributes.start_time DESC"])
        labelled = [(run.data.tags, run.data.metrics) for run in found]
    columns = job_columns(labelled)
    return share_view(client, experiment_id, name, search_filter, columns, order_by,
                      widths={RUN_NAME_COLUMN: RUN_NAME_WIDTH, **dict.fromkeys(columns, COLUMN_WIDTH)})


def ui_base(client: MlflowClient, experiment_id: str, configured: str) -> str:
    """Where the reports' links point: where `make ui` last served this store (it records it), else `configured`."""
    return client.get_experiment(experiment_id).tags.get(UI_URL_TAG) or configured


def latest_sweep_view(client: MlflowClient, experiment_id: str) -> str | None:
    """The saved view of the latest sweep that has one (a sweep whose aggregate step ran)."""
    views = client.get_experiment(experiment_id).tags
    for run in client.search_runs([experiment_id], f"tags.stage = '{SWEEP_STAGE}'", max_results=50,
                                  order_by=["attributes.start_time DESC"]):
        name = sweep_view_name(run.info.run_id)
        if SHARED_VIEW_TAG + name in views:
            return name
    return None


def sweep_view_name(sweep_run: str) -> str:
    return f"sweep-{sweep_run}"
