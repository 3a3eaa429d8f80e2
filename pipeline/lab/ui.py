"""`make ui` (`python -m pipeline.lab.ui [port=N] [open=false]`): the MLflow UI on the tracking store, opened on
its classic runs view, with a saved view of the job runs and their metrics (links: `pipeline.store.links`)."""
from __future__ import annotations

import os
import sys
import webbrowser
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline import CONF_DIR
from pipeline.errors import PipelineError, reported
from pipeline.lab.server import ServerSettings, ensure_port_free, serving, stop_on_sigterm, wait_until_stopped
from pipeline.store import tracking
from pipeline.store.links import JOB_FILTER, job_metric_columns, runs_url, share_view
from pipeline.store.tracking import TrackingStore

JOBS_VIEW = "jobs"  # every job run with its metrics; `python -m pipeline.lab.ui` saves it
# MLflow's job runner (GenAI judges and online scoring) starts seven worker processes beside the server; the runs
# view needs none of them.
UI_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


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
                            f"another with `make ui PORT=...` (`python -m pipeline.lab.ui port=...`)") from None


def announce(base: str, experiment_id: str, open_browser: bool) -> None:
    url = runs_url(base, experiment_id)
    print(f"MLflow UI: {url}", flush=True)
    if open_browser:
        open_in_browser(url)


@hydra.main(config_path=str(CONF_DIR), config_name="ui", version_base="1.3")
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
