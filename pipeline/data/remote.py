"""Remote dataset roots, fetched without a shell: Hugging Face Hub addresses through `huggingface_hub` (HF_TOKEN,
HF_HUB_OFFLINE, HF_ENDPOINT and its download cache all apply), other http(s) URLs through urllib into a local
cache. Whatever is fetched lands in a local folder with the dataset's own layout, so readers only see local paths.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError, one_line

log = logging.getLogger(__name__)

URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULT_HUB = "https://huggingface.co"
HTTP_TIMEOUT_S = 60
DEFAULT_HTTP_CACHE = "~/.cache/clip-tables"  # used when neither data_cache nor paths.data_cache is given
# Files a webdataset root may have besides its shards; only nshards.txt is required (clip_benchmark's layout).
OPTIONAL_METADATA = ("classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt")


@dataclass(frozen=True)
class HubAddress:
    """`<endpoint>/datasets/<org>/<name>/tree/<revision>[/<folder>]`, as clip_benchmark's docs write Hub roots."""

    endpoint: str
    repo_id: str
    revision: str
    folder: str = ""

    def path(self, name: str) -> str:
        return f"{self.folder}/{name}" if self.folder else name


def hub_hosts() -> set[str]:
    """huggingface.co and the host of HF_ENDPOINT (a mirror, or a test server)."""
    hosts = {urllib.parse.urlsplit(DEFAULT_HUB).hostname}
    if os.environ.get("HF_ENDPOINT"):
        hosts.add(urllib.parse.urlsplit(os.environ["HF_ENDPOINT"]).hostname)
    return hosts


def parse_hub_address(root: str) -> HubAddress | None:
    parts = urllib.parse.urlsplit(root)
    if parts.hostname not in hub_hosts():
        return None
    match = re.match(r"^/datasets/([^/]+/[^/]+)/(?:tree|resolve|raw)/([^/]+)/?(.*)$", parts.path)
    if not match:
        raise PipelineError(f"dataset.root={root!r} is on the Hugging Face Hub but not of the form "
                            f"{parts.scheme}://{parts.netloc}/datasets/<org>/<name>/tree/<revision>")
    repo_id, revision, folder = match.groups()
    endpoint = f"{parts.scheme}://{parts.netloc}"
    if parts.hostname == urllib.parse.urlsplit(DEFAULT_HUB).hostname and os.environ.get("HF_ENDPOINT"):
        endpoint = os.environ["HF_ENDPOINT"].rstrip("/")  # a mirror of the Hub serves the catalog's addresses
    return HubAddress(endpoint, repo_id, urllib.parse.unquote(revision), folder.strip("/"))


ACCEPTED = {"wds": "a local folder or an http(s):// URL", "hf": "a local folder or a Hugging Face dataset id org/name",
            "folder": "a local folder", "tfds": "a local folder (TFDS' data_dir)",
            "voc": "a local folder or an http(s):// URL of the devkit's test archive",
            "sugar_crepe": "a local folder or the http(s):// URL of its annotation folder",
            "lines": "a local folder or the http(s):// URL of its annotation folder"}
URL_FORMATS = ("wds", "voc", "sugar_crepe", "lines")  # formats whose root may be a plain URL


def check_root(root: str, fmt: str) -> str:
    """What kind of root this is: `local`, `http` (a URL; webdatasets and VOC archives) or `hub_id` (format hf only);
    anything else is refused.

    Safety does not come from filtering characters: no root ever reaches a shell, local roots are made
    absolute before any reader sees them, and webdataset is only handed absolute paths of local files,
    so none of its URL handlers (`pipe:` runs a shell) can run."""
    refused = PipelineError(f"dataset.root={root!r} is not usable for dataset.format={fmt}: give {ACCEPTED[fmt]}")
    if root.startswith(("http://", "https://")):
        if fmt not in URL_FORMATS:
            raise refused
        return "http"
    if URL_SCHEME.match(root):
        raise refused
    if fmt == "hf" and HUB_ID.match(root) and not Path(root).exists():
        return "hub_id"
    return "local"


# -- Hugging Face Hub -------------------------------------------------------------------------------------
def hub_error(repo_id: str, endpoint: str, exc: BaseException) -> PipelineError | None:
    """A clear message for the Hub's answers that need the user: gated, missing, or unreachable and not cached."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return PipelineError(f"dataset {repo_id} is gated: accept its conditions at {endpoint}/datasets/{repo_id} "
                             f"and set HF_TOKEN (or run `hf auth login`)")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return PipelineError(f"dataset {repo_id} was not found on {endpoint} (or it is private: set HF_TOKEN)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return PipelineError(f"dataset {repo_id} has no such revision on {endpoint}: {one_line(exc)}")
    if isinstance(exc, errors.LocalEntryNotFoundError):
        return PipelineError(f"dataset {repo_id} cannot be reached on {endpoint} and is not in the local cache; "
                             f"run once online, or point data_root at a local mirror")
    return None


def hub_download(address: HubAddress, name: str, cache_dir: str | None, revision: str | None = None,
                 required: bool = True) -> Path | None:
    """One file of a Hub dataset, through the Hub's cache; None when an optional file does not exist (the Hub
    cache records that, so a cached root reads again offline)."""
    from huggingface_hub import errors, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    if revision is not None:
        cached = try_to_load_from_cache(address.repo_id, address.path(name), cache_dir, revision, "dataset")
        if cached is _CACHED_NO_EXIST:
            return None
        if isinstance(cached, str):
            return Path(cached)
    try:
        return Path(hf_hub_download(address.repo_id, address.path(name), repo_type="dataset",
                                    revision=revision or address.revision, cache_dir=cache_dir,
                                    endpoint=address.endpoint))
    except errors.EntryNotFoundError as exc:
        if not required and not isinstance(exc, errors.LocalEntryNotFoundError):
            return None
        clear = hub_error(address.repo_id, address.endpoint, exc)
        raise clear or PipelineError(f"{address.path(name)} is missing from dataset {address.repo_id}") from exc
    except Exception as exc:
        clear = hub_error(address.repo_id, address.endpoint, exc)
        if clear is None:
            raise PipelineError(f"cannot fetch {address.path(name)} of dataset {address.repo_id} from "
                                f"{address.endpoint}: {one_line(exc)}") from exc
        raise clear from exc


def snapshot_of(downloaded: Path, address: HubAddress) -> tuple[Path, str]:
    """(the local folder that mirrors the root, the commit) from a file's path in the Hub cache,
    `.../snapshots/<commit>/<folder>/<file>`."""
    parts = downloaded.parts
    index = len(parts) - 1 - parts[::-1].index("snapshots")
    snapshot = Path(*parts[:index + 2])
    return (snapshot / address.folder if address.folder else snapshot), parts[index + 1]


# -- plain HTTP -------------------------------------------------------------------------------------------
def http_cache_folder(root: str, cache_dir: Path) -> Path:
    """One folder per remote root, named by its address's hash (readable name, no path tricks)."""
    digest = hashlib.sha256(root.encode()).hexdigest()[:16]
    host = re.sub(r"[^A-Za-z0-9.-]", "_", urllib.parse.urlsplit(root).hostname or "host")
    return cache_dir / "http" / f"{host}-{digest}"


def http_download(root: str, name: str, target: Path, required: bool = True) -> Path | None:
    """`<root>/<name>` into `target` (atomically), unless already there; None when an optional file is absent
    (remembered beside it, so that a cached root is read again without the network)."""
    absent = target.with_name(f".absent.{target.name}")
    if target.is_file():
        return target
    if absent.is_file() and not required:
        return None
    url = f"{root.rstrip('/')}/{urllib.parse.quote(name)}"
    partial = None
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".partial.", delete=False) as partial:
                shutil.copyfileobj(response, partial)
        os.replace(partial.name, target)
        return target
    except urllib.error.HTTPError as exc:
        # Object stores answer 403 for a missing key when listing is not allowed.
        if exc.code in (403, 404) and not required:
            absent.parent.mkdir(parents=True, exist_ok=True)
            absent.touch()
            return None
        raise PipelineError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}; check dataset.root") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise PipelineError(f"cannot fetch {url}: {one_line(exc)}; check dataset.root and the network") from exc
    finally:
        if partial is not None and Path(partial.name).exists():
            Path(partial.name).unlink()


# -- a webdataset root, fetched ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalCopy:
    """Where a remote webdataset root's files are on disk, what identifies its content, and the root pinned to
    that content (a Hub root at the commit its revision resolved to), so later reads fetch the same version."""

    folder: Path
    identity: dict
    pinned_root: str


def fetch_webdataset(root: str, split: str, hub_cache: str | None, http_cache: Path, shards: bool) -> LocalCopy:
    """Metadata (and with `shards`, every shard of `split`) of a remote root in a local folder of the same layout:
    a Hub root in the Hub's cache (`hub_cache`, or its default), any other URL under `http_cache`."""
    address = parse_hub_address(root)
    if address is not None:
        first = hub_download(address, f"{split}/nshards.txt", hub_cache)
        folder, commit = snapshot_of(first, address)

        def fetch(name: str, required: bool = True) -> Path | None:
            # Pinned to the commit nshards.txt came from, so every file is of one version of the dataset.
            return hub_download(address, name, hub_cache, commit, required)

        identity = {"root": root, "commit": commit}
        pinned = f"{address.endpoint}/datasets/{address.repo_id}/tree/{commit}" + (f"/{address.folder}" if address.folder else "")
    else:
        folder = http_cache_folder(root, http_cache)

        def fetch(name: str, required: bool = True) -> Path | None:
            return http_download(root, name, folder / name, required)

        fetch(f"{split}/nshards.txt")
        identity = {"root": root}
        pinned = root
    for name in OPTIONAL_METADATA:
        fetch(name, required=False)
    if shards:
        for index in range(read_nshards(folder / split / "nshards.txt", root)):
            fetch(f"{split}/{index}.tar")
    return LocalCopy(folder, identity, pinned)


def shard_paths(folder: Path, split: str) -> list[Path]:
    """Absolute paths of a split's shards in CLIP_benchmark's webdataset layout, as `nshards.txt` counts them."""
    folder = folder.resolve()
    nshards = read_nshards(folder / split / "nshards.txt", str(folder))
    return [folder / split / f"{index}.tar" for index in range(nshards)]


def read_nshards(path: Path, root: str) -> int:
    text = path.read_text().strip()
    if not text.isdigit():
        raise PipelineError(f"{root}: {path.parent.name}/nshards.txt should hold a number of shards, not {text[:40]!r}")
    return int(text)


# -- archives -------------------------------------------------------------------------------------------------
def fetched_archive(url: str, cache_dir: Path, md5: str | None = None) -> Path:
    """The tar archive at `url` (gzip or not) unpacked: fetched and unpacked once, then served from `cache_dir`; its
    MD5 checked when given. Jobs of a parallel sweep that need it at once take turns on a file lock, so one fetches
    and unpacks while the others wait and then read its copy; it is unpacked into a folder of its own and renamed
    into place when complete, so a failure leaves nothing a later run would take for a whole copy. tarfile's
    `data` filter refuses links and paths that leave the folder."""
    import fcntl

    folder = http_cache_folder(url, cache_dir)
    unpacked = folder / "unpacked"
    if unpacked.is_dir():
        return unpacked
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if unpacked.is_dir():  # another job unpacked it while this one waited
            return unpacked
        base, name = url.rsplit("/", 1)
        archive = http_download(base, urllib.parse.unquote(name), folder / "archive")
        if md5 and file_md5(archive) != md5.lower():
            archive.unlink()
            raise PipelineError(f"{url} is not the expected archive (its MD5 differs from dataset.archive_md5={md5}); "
                                f"check dataset.root")
        partial = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=folder))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(partial, filter="data")
            os.replace(partial, unpacked)
        except (tarfile.TarError, OSError) as exc:
            raise PipelineError(f"{url} cannot be unpacked ({one_line(exc)}); check the dataset's address") from exc
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        archive.unlink()  # the unpacked copy is what is read: keeping both would double the space
    return unpacked


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # a download check, not a security one
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
