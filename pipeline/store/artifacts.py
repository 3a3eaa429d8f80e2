"""A stage's output on disk and in the artifact store: plain `.npy` arrays and `metrics.json`, each with the
SHA-256 recorded as a run tag when it was written and checked when it is read back."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from pipeline.errors import one_line

if TYPE_CHECKING:  # MLflow loads where the store is used: a table of result files never imports it
    from mlflow.entities import Run

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CHECKSUM_TAG = "checksum."


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class StageOutput:
    """What a stage produces: named arrays (saved as plain .npy) and scalar metrics."""

    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)  # extra tags for the run (e.g. the inputs it used)
    # Files for people (plots), logged beside the arrays but never read back, so they carry no checksum.
    figures: Mapping[str, bytes] = field(default_factory=dict)


class CorruptArtifact(RuntimeError):
    """A cached file is missing or does not match the checksum recorded when it was written."""


class ArtifactUnavailable(RuntimeError):
    """A cached file could not be downloaded for a reason that may pass (network error, server 5xx)."""


DOWNLOAD_ATTEMPTS = 4
DOWNLOAD_BACKOFF_S = 0.5


def is_not_found(exc: BaseException) -> bool:
    """A definite "this artifact does not exist" from the store, as opposed to a failure that may pass."""
    if isinstance(exc, FileNotFoundError) or getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
        return True
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 404


@dataclass(frozen=True)
class Location:
    """What reading a run's files back needs: where they are and the checksums its tags record. A `Run` has it; so
    has a row of the store's index (`store.index`), which reads thousands of them without fetching a run each."""

    run_id: str
    artifact_uri: str
    tags: Mapping[str, str]

    @classmethod
    def of(cls, run: Run | Location) -> Location:
        return run if isinstance(run, Location) else cls(run.info.run_id, run.info.artifact_uri, run.data.tags)


def recorded_checksums(run: Run | Location) -> dict[str, str]:
    """The SHA-256 of each file, as recorded when the run was written."""
    tags = Location.of(run).tags
    return {k.removeprefix(CHECKSUM_TAG): v for k, v in tags.items() if k.startswith(CHECKSUM_TAG)}


def fetch_verified(run: Run | Location, checksums: Mapping[str, str], directory: Path, tracking_uri: str) -> None:
    """Download each named file into `directory` and check it against its checksum."""
    for name, expected in checksums.items():
        _check(name, download(run, name, directory, tracking_uri), expected)


def _check(name: str, path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise CorruptArtifact(f"{name} checksum {actual[:12]} != recorded {expected[:12]}")


def verified_folder(run: Run | Location, checksums: Mapping[str, str], scratch: Path, tracking_uri: str) -> Path:
    """The folder holding the named files, each checked against its checksum: a store on this machine's disk is read
    where it is (MLflow's download would copy every file first: a table over a suite reads thousands); any other is
    downloaded into `scratch`."""
    local = local_folder(Location.of(run))
    if local is None:
        fetch_verified(run, checksums, scratch, tracking_uri)
        return scratch
    for name, expected in checksums.items():
        try:
            _check(name, local / name, expected)
        except FileNotFoundError as exc:
            raise CorruptArtifact(f"{name} is missing from the artifact store: {local / name} does not exist") from exc
        except OSError as exc:  # a disk or network filesystem that may answer again
            raise ArtifactUnavailable(f"{name}: {local / name} cannot be read ({exc})") from exc
    return local


def local_folder(where: Location) -> Path | None:
    """Where a run's files are on this machine's disk (as MLflow's own local artifact store reads the URI); None for
    a remote artifact store."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    if urllib.parse.urlparse(where.artifact_uri).scheme not in ("", "file"):
        return None
    return Path(local_file_uri_to_path(where.artifact_uri))


def load(run: Run, tracking_uri: str, only: tuple[str, ...] | None = None) -> StageOutput:
    """A run's output, every file checked against its recorded checksum; `only` names the files to read."""
    checksums = recorded_checksums(run)
    if not checksums:
        raise CorruptArtifact("no checksums recorded")
    if only is not None:
        checksums = {name: digest for name, digest in checksums.items() if name in only}
        if set(only) - set(checksums):
            raise CorruptArtifact(f"{', '.join(sorted(set(only) - set(checksums)))} not recorded")
    with tempfile.TemporaryDirectory() as tmp:
        return read_output(verified_folder(run, checksums, Path(tmp), tracking_uri), checksums)


def load_arrays(run: Run | Location, names: tuple[str, ...], tracking_uri: str) -> dict[str, np.ndarray] | None:
    """Some of a run's arrays, each checked against its recorded checksum; None when the run has none of them."""
    checksums = recorded_checksums(run)
    files = {f"{name}.npy": checksums.get(f"{name}.npy") for name in names}
    if not all(files.values()):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return read_output(verified_folder(run, files, Path(tmp), tracking_uri), files).arrays


def download(run: Run | Location, name: str, directory: Path, tracking_uri: str) -> Path:
    """One artifact, retried with backoff on failures that may pass; a definite "not found" is corrupt.

    It is addressed by the run's artifact URI, not `runs:/`, whose resolver reports every failure as
    "does not exist" and so would hide a passing network error."""
    where = Location.of(run)
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            import mlflow.artifacts

            return Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"{where.artifact_uri.rstrip('/')}/{name}", dst_path=str(directory),
                tracking_uri=tracking_uri))
        except Exception as exc:  # MLflow raises MlflowException, requests' and OS errors, depending on the store
            if is_not_found(exc):
                raise CorruptArtifact(f"{name} is missing from the artifact store: {exc}") from exc
            if attempt == DOWNLOAD_ATTEMPTS:
                raise ArtifactUnavailable(f"{name}: {DOWNLOAD_ATTEMPTS} attempts failed, last: {exc}") from exc
            log.warning("downloading %s of run %s failed (%s); retrying (%d/%d)", name, where.run_id,
                        one_line(exc)[:200], attempt + 1, DOWNLOAD_ATTEMPTS)
            time.sleep(DOWNLOAD_BACKOFF_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")



def write_output(directory: Path, output: StageOutput) -> dict[str, str]:
    checksums: dict[str, str] = {}
    for name, array in output.arrays.items():
        path = directory / f"{name}.npy"
        np.save(path, np.asarray(array), allow_pickle=False)
        checksums[path.name] = sha256_file(path)
    if output.metrics:
        path = directory / METRICS_FILE
        # NaN (e.g. acc5 with < 5 classes) is kept as null so the file stays strict JSON.
        metrics = {k: (None if math.isnan(float(v)) else float(v)) for k, v in output.metrics.items()}
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        checksums[path.name] = sha256_file(path)
    write_files(directory, output.figures)
    return checksums


def write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    """Files named by relative paths (`overlays/a.png`) under `directory`."""
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)


def read_output(directory: Path, names: Mapping[str, str]) -> StageOutput:
    arrays = {Path(n).stem: np.load(directory / n, allow_pickle=False) for n in names if n.endswith(".npy")}
    metrics: dict[str, float] = {}
    if METRICS_FILE in names:
        raw = json.loads((directory / METRICS_FILE).read_text())
        metrics = {k: (math.nan if v is None else float(v)) for k, v in raw.items()}
    return StageOutput(arrays, metrics)


QUARANTINED = "clip_tables.quarantined"  # an experiment tag: when its latest run was quarantined, and which


def mark_corrupt(client, run_id: str, reason: str) -> None:
    """A run whose files do not match their checksums is never served again (nor deleted: it says what was wrong)."""
    client.set_tag(run_id, "cache_store", "false")
    client.set_tag(run_id, "cache_corrupt", reason[:500])
    # Stores' indexes (`store.index`) read quarantined runs again whenever this experiment tag changes: a value
    # no two quarantines share, so two workers quarantining at once never leave it as an index last saw it.
    experiment_id = client.get_run(run_id).info.experiment_id
    client.set_experiment_tag(experiment_id, QUARANTINED, f"{time.time():.6f} {run_id}")
