"""`make ui` (`python -m pipeline.lab.ui [port=N] [open=false]`): the MLflow UI on the tracking store, opened on the
latest sweep's job runs with what each ran and its main metric with its interval (links: `pipeline.store.links`).
It records where it serves the UI, so the reports written after it link to the port actually served."""
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
from pipeline.store import links
from pipeline.store.links import JOB_FILTER, runs_url
from pipeline.store.tracking import TrackingStore

JOBS_VIEW = "jobs"  # every job run with its metrics; `python -m pipeline.lab.ui` saves it
# MLflow's job runner (GenAI judges and online scoring) starts seven worker processes beside the server; the runs
# view needs none of them.
UI_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def prepare(store: TrackingStore, served: str | None = None) -> str:
    """Mark the experiment as classic model development, save the view of every job run, record where the UI is
    `served` (a local store's); returns the view to open: the latest sweep's jobs, else every job run."""
    client = store.client
    client.set_experiment_tag(store.experiment_id, *tracking.EXPERIMENT_KIND)
    if served:
        client.set_experiment_tag(store.experiment_id, links.UI_URL_TAG, served)
    links.save_job_view(client, store.experiment_id, JOBS_VIEW, JOB_FILTER)
    return links.latest_sweep_view(client, store.experiment_id) or JOBS_VIEW


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


def announce(base: str, experiment_id: str, view: str, open_browser: bool) -> None:
    url = runs_url(base, experiment_id, view=view)
    what = "the latest sweep's job runs" if view != JOBS_VIEW else "every job run"
    print(f"MLflow UI: {url}\n  ({what}; every job run: {runs_url(base, experiment_id, view=JOBS_VIEW)})", flush=True)
    if open_browser:
        open_in_browser(url)


@hydra.main(config_path=str(CONF_DIR), config_name="ui", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    remote = cfg.tracking.uri.startswith(("http://", "https://"))
    if not remote:
        ensure_ui_port_free(int(cfg.port))
    store = tracking.connect_cfg(cfg.tracking)
    if remote:  # a tracking server serves its own UI
        view = prepare(store)
        announce(cfg.tracking.get("ui_url") or cfg.tracking.uri, store.experiment_id, view, cfg.open)
        return
    artifacts = cfg.tracking.get("artifact_location") or str(Path(cfg.paths.outputs) / "mlartifacts")
    settings = ServerSettings(store.uri, str(artifacts), "127.0.0.1", int(cfg.port), workers=1, env=UI_SERVER_ENV)
    stop_on_sigterm()
    with serving(settings, Path(cfg.log)) as server:
        announce(server.url, store.experiment_id, prepare(store, server.url), cfg.open)
        status = wait_until_stopped(server.process)
    if status is not None:
        raise PipelineError(f"the MLflow UI exited with status {status}; see {cfg.log}")


if __name__ == "__main__":
    main()
