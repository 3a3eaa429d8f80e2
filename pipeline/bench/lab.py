"""Benchmark `lab`: the lab's server under load, as a stress run. `make server` with authentication on its private
PostgreSQL, a worker user with EDIT only, and MLflow's telemetry as a user's machine has it (no CI markers, nobody's
choice about telemetry); then, round after round, a cold sweep of 8 parallel jobs (joblib) over two checkpoints of
the bundled tiny model and four prompt sets, and the same sweep again. Each round checks that every key was computed
once, no run was lost, no claim was left held, and the second sweep computed nothing; it counts the store requests
each job made (the server's access log) and the wall time of both sweeps.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mlflow.entities import ViewType

from pipeline.bench.processes import BenchFailure
from pipeline.lab.auth import AuthFiles, acting_as, add_user, grant, recorded_server
from pipeline.store import tracking
from pipeline.store.claims import HELD, STATE_TAG

PROMPTS = "dataset,classname,a_photo_of,simple_imagenet"
STAGES = ("embed", "classify", "score")
# What MLflow 3.17 reads to decide a process is in CI or a test, where it keeps telemetry off by itself
# (mlflow/telemetry/utils.py); a user's machine has none of them, and nobody's choice either way.
NOT_A_USERS_MACHINE = {"PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL",
                       "TRAVIS", "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE",
                       "TEAMCITY_VERSION", "CLOUD_RUN_EXECUTION", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}
REQUEST = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) /')


@dataclass(frozen=True)
class Round:
    cold_s: float
    cached_s: float
    cold_requests: int
    cached_requests: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def authenticated_server(folder: Path) -> Iterator[str]:
    """`make server auth=true` in `folder`, as a process, until the block ends; yields its URL."""
    process = subprocess.Popen([sys.executable, "-m", "pipeline.lab.server", f"folder={folder}", "auth=true",
                                f"port={free_port()}", f"postgres.port={free_port()}", "workers=4"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put(None)],
                     daemon=True).start()
    try:
        said, deadline = [], time.monotonic() + 240
        while True:
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            if line is None or time.monotonic() > deadline:
                raise BenchFailure(f"the server did not start: {''.join(said)[-1500:]}")
            said.append(line)
            if line.startswith("Workers use: tracking=server tracking.uri="):
                break
        yield line.strip().rsplit("=", 1)[1]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()


def user_environment(env_file: Path) -> dict[str, str]:
    clean = {name: value for name, value in os.environ.items() if name not in NOT_A_USERS_MACHINE}
    return {**clean, **dict(line.split("=", 1) for line in env_file.read_text().splitlines())}


def requests_logged(folder: Path) -> int:
    return sum(1 for line in (folder / "mlflow-server.log").read_text(errors="replace").splitlines()
               if REQUEST.search(line))


def sweep(url: str, experiment: str, env: dict[str, str], workdir: Path, assets: list[str]) -> tuple[float, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline", "-m", "tracking=server", f"tracking.uri={url}",
                           f"tracking.experiment={experiment}", f"prompts={PROMPTS}", "hydra/launcher=joblib",
                           "hydra.launcher.n_jobs=8", *assets], cwd=workdir, capture_output=True, text=True,
                          env={**env, "CLIP_TABLES_OUTPUTS": str(workdir / "outputs")})
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise BenchFailure(f"a sweep failed: {(done.stdout + done.stderr)[-2000:]}")
    return elapsed, done.stdout + done.stderr


def check(store: tracking.TrackingStore) -> None:
    """Every key computed once, every job run finished, no claim held."""
    runs = store.client.search_runs([store.experiment_id], "", run_view_type=ViewType.ALL, max_results=5000)
    keys = Counter(run.data.tags["cache_key"] for run in runs if run.data.tags.get("stage") in STAGES)
    twice = [key for key, count in keys.items() if count > 1]
    jobs = [run for run in runs if run.data.tags.get("stage") == "job"]
    held = [run for run in runs if run.data.tags.get(STATE_TAG) == HELD]
    if twice or len(jobs) != 8 or any(run.info.status != "FINISHED" for run in jobs) or held:
        raise BenchFailure(f"keys computed twice: {twice}; job runs: {[run.info.status for run in jobs]}; "
                           f"claims left held: {len(held)}")


def stress(assets: list[str], rounds: int, scratch: Path) -> list[Round]:
    folder = Path(tempfile.mkdtemp(prefix="clip-tables-stress-", dir="/tmp")) / "server"
    folder.parent.chmod(0o755)  # the `postgres` user enters it when this runs as root
    done: list[Round] = []
    with authenticated_server(folder) as url:
        admin = AuthFiles(folder / "auth").admin(None)
        env = user_environment(add_user(folder, "bench", "worker"))
        for number in range(rounds):
            experiment = f"stress-{number}"
            with acting_as(admin):  # the admin makes each round's experiment, the worker gets EDIT on it alone
                store = tracking.connect(str(recorded_server(folder)["url"]), experiment)
            grant(folder, "bench", store.experiment_id, tracking.EDIT)
            before = requests_logged(folder)
            cold, _ = sweep(url, experiment, env, scratch / f"cold{number}", assets)
            middle = requests_logged(folder)
            with acting_as(admin):
                check(store)
            cached, said = sweep(url, experiment, env, scratch / f"cached{number}", assets)
            if "MISS" in said:
                raise BenchFailure(f"round {number}: the second sweep computed something")
            done.append(Round(cold, cached, middle - before, requests_logged(folder) - middle))
            print(f"  round {number + 1}/{rounds}: cold {cold:.1f} s, cached {cached:.1f} s", flush=True)
    return done
