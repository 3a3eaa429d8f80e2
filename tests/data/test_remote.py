"""Remote roots without a shell: hostile roots run nothing, a loopback Hub and a plain HTTP server serve real
webdatasets (fetched once, then read with the server stopped), and a gated dataset says what to do.

Every test here puts a fake `curl` first on PATH that would leave a marker file: it must never run."""
import os
import stat
from pathlib import Path

import pytest
import torch

from pipeline.data import datasets, reading, remote
from pipeline.errors import PipelineError
from pipeline.jobs.scoring import run_job
from tests import synthetic
from tests.conftest import compose_config
from tests.loopback import FakeHub, free_port


@pytest.fixture(autouse=True)
def fake_curl(tmp_path, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    marker = tmp_path / "CURL_RAN"
    curl = folder / "curl"
    curl.write_text(f"#!/bin/sh\ntouch {marker}\n")
    curl.chmod(curl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)  # a relative `touch MARKER` would land here
    yield marker
    assert not marker.exists(), "curl ran"
    assert not (tmp_path / "MARKER").exists(), "a shell ran"


def spec(root: str, fmt: str = "wds", **extra) -> datasets.DatasetSpec:
    return datasets.DatasetSpec.from_cfg({"name": "shapes", "task": "zeroshot_classification", "root": root,
                                          "split": "test", "main_metric": "acc1", "format": fmt}, **extra)


@pytest.mark.parametrize("root", [
    "http://127.0.0.1:{port}/a';touch MARKER;echo '",
    "https://127.0.0.1:{port}/x$(touch MARKER)",
    "/data/$(touch MARKER)",
    "/data/`touch MARKER`",
    "shapes; touch MARKER",
    "pipe:touch MARKER",
    "file:///etc;touch MARKER",
])
def test_hostile_roots_run_nothing_and_fail_in_one_line(root, tmp_path):
    root = root.format(port=free_port())
    with pytest.raises(PipelineError) as failure:
        datasets.describe(spec(root, data_cache=str(tmp_path / "cache")))
    message = str(failure.value)
    assert "\n" not in message and ("dataset.root" in message or "dataset root" in message or "cannot fetch" in message)


@pytest.mark.parametrize("folder", ["q';touch MARKER;echo ':/y", "pipe:touch MARKER;cat 0.tar #"])
def test_hostile_folder_names_are_read_as_folders(tmp_path, shapes_root, folder):
    """Folders that exist under hostile names: `./q';...;echo '://y` would make clip_benchmark run `curl` in a
    shell (it sees "://"), and `./pipe:...` would turn into webdataset's `pipe:` handler, if either reached them
    relative; roots are made absolute first, so they are read as the folders they are."""
    import shutil

    shutil.copytree(shapes_root, tmp_path / folder)
    relative = "./" + folder.replace(":/", "://") if "://" not in folder and ":/" in folder else "./" + folder
    dataset = spec(relative)
    assert Path(dataset.root).is_absolute()
    info = datasets.describe(dataset)
    batch = next(reading.classification_batches(dataset, lambda image: torch.zeros(1), 8, 0))
    assert len(info.classnames) == 12 and len(batch.fields["cls"]) == 8


def test_only_hf_datasets_take_a_hub_id():
    assert spec("nlphuji/winogavil", fmt="hf").root_kind == "hub_id"
    assert spec("nlphuji/winogavil").root_kind == "local"  # a webdataset root without a scheme is a folder
    with pytest.raises(PipelineError, match="dataset.root='pipe:cat x'"):
        spec("pipe:cat x", fmt="hf")


def job(tmp_path, tiny_checkpoint, root: str, *overrides: str):
    cfg = compose_config("dataset=wds", "dataset.name=shapes_remote", f"dataset.root={root}",
                         f"model.pretrained={tiny_checkpoint}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                         f"tracking.artifact_location={tmp_path}/artifacts", "num_workers=0",
                         f"data_cache={tmp_path}/data_cache", *overrides)
    return run_job(cfg)


@pytest.fixture
def served(tmp_path, monkeypatch):
    folder = synthetic.write_wds_classification(tmp_path / "served", per_class=2)
    hub = FakeHub({"org/shapes": folder})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


def shard_downloads(hub: FakeHub) -> int:
    return sum(r.startswith("GET") and r.endswith("/test/0.tar") for r in hub.requests)


def test_hub_root_is_fetched_once_then_read_with_the_server_stopped(tmp_path, tiny_checkpoint, served):
    root = f"{served.url}/datasets/org/shapes/tree/main"
    with served:
        online = job(tmp_path, tiny_checkpoint, root)
        again = job(tmp_path, tiny_checkpoint, root, "cache.enabled=false")  # a second job reads every shard again
        assert shard_downloads(served) == 1 and again.value == online.value
    asked = len(served.requests)
    offline = job(tmp_path, tiny_checkpoint, root, "cache.enabled=false")  # the server is gone
    assert len(served.requests) == asked and offline.value == online.value and online.value > 0.5
    snapshot = next((tmp_path / "data_cache" / "hub").glob("datasets--org--shapes/snapshots/*/test/0.tar"))
    assert snapshot.parent.parent.name == FakeHub.COMMIT
    fingerprint = datasets.describe(spec(root, data_cache=str(tmp_path / "data_cache"))).fingerprint
    assert fingerprint["commit"] == FakeHub.COMMIT and fingerprint["root"] == root


def test_plain_http_root_uses_a_plain_client_and_its_own_cache(tmp_path, tiny_checkpoint, served):
    root = f"{served.url.replace('127.0.0.1', 'localhost')}/plain/org/shapes"  # not HF_ENDPOINT's host: plain HTTP
    with served:
        online = job(tmp_path, tiny_checkpoint, root)
    assert [p.name for p in (tmp_path / "data_cache" / "http").glob("*/test/*.tar")] == ["0.tar"]
    asked = len(served.requests)
    assert job(tmp_path, tiny_checkpoint, root, "cache.enabled=false").value == online.value
    assert len(served.requests) == asked


def test_gated_dataset_without_a_token_says_what_to_do(tmp_path, monkeypatch):
    folder = synthetic.write_wds_classification(tmp_path / "served", per_class=1)
    with FakeHub({"org/gated": folder}, gated=True) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(PipelineError, match=r"dataset org/gated is gated: accept its conditions at .* HF_TOKEN"):
            datasets.describe(spec(f"{hub.url}/datasets/org/gated/tree/main", data_cache=str(tmp_path / "cache")))


def test_a_missing_remote_file_is_named(tmp_path, served):
    with served:
        with pytest.raises(PipelineError, match="^test/nshards.txt is missing from dataset org/none$"):
            datasets.describe(spec(f"{served.url}/datasets/org/none/tree/main", data_cache=str(tmp_path / "c")))
        plain = f"{served.url.replace('127.0.0.1', 'localhost')}/plain/org/shapes"
        with pytest.raises(PipelineError, match=r"cannot fetch .*/plain/org/shapes/validation/nshards.txt: HTTP 404"):
            datasets.describe(datasets.DatasetSpec.from_cfg(
                {"name": "shapes", "task": "zeroshot_classification", "root": plain,
                 "split": "validation", "main_metric": "acc1"}, str(tmp_path / "c")))


def point_huggingface_hub_at(url: str, monkeypatch) -> None:
    """What HF_ENDPOINT does when set before huggingface_hub is imported (it reads it once, at import)."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", url)
    monkeypatch.setattr("huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


def parquet_branch(folder, config: str = "default"):
    """What the Hub's parquet converter publishes on refs/convert/parquet: <config>/<split>/0000.parquet."""
    import datasets as hf

    rows, features = synthetic.retrieval_rows(per_class=1)
    (folder / config / "test").mkdir(parents=True)
    hf.Dataset.from_dict(rows, features=features).to_parquet(str(folder / config / "test" / "0000.parquet"))
    return folder


def test_nlphuji_dataset_from_the_hubs_parquet_conversion(tmp_path, tiny_checkpoint, monkeypatch):
    """A Hub id reads the parquet branch through huggingface_hub (no dataset script), keyed by its commit; a gated
    one says what to do."""
    repo = "nlphuji/flickr_1k_test_image_text_retrieval"
    with FakeHub({repo: parquet_branch(tmp_path / "branch")}) as hub:
        point_huggingface_hub_at(hub.url, monkeypatch)
        cfg = compose_config("dataset=retrieval/flickr_1k_test_image_text_retrieval", f"model.pretrained={tiny_checkpoint}",
                             f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "num_workers=0",
                             f"tracking.artifact_location={tmp_path}/artifacts", f"data_cache={tmp_path}/data_cache")
        assert cfg.dataset.root == repo
        result = run_job(cfg)
        assert result.metric == "mean_recall@1" and result.value > 0.2
        assert any("revision/refs%2Fconvert%2Fparquet" in r for r in hub.requests)
        info = datasets.describe(datasets.DatasetSpec.from_cfg(cfg.dataset, str(tmp_path / "data_cache")))
        assert info.fingerprint["commit"] == FakeHub.COMMIT and info.fingerprint["hf_config"] is None
    with FakeHub({repo: tmp_path / "branch"}, gated=True) as gated:
        point_huggingface_hub_at(gated.url, monkeypatch)
        with pytest.raises(PipelineError, match=f"dataset {repo} is gated: accept its conditions .* HF_TOKEN"):
            fresh = tmp_path / "fresh"  # nothing cached: neither the files nor the features
            run_job(compose_config("dataset=retrieval/flickr_1k_test_image_text_retrieval",
                                   f"model.pretrained={tiny_checkpoint}", f"tracking.uri=sqlite:///{fresh}/mlflow.db",
                                   "num_workers=0", f"tracking.artifact_location={fresh}/artifacts",
                                   f"data_cache={fresh}/data_cache"))


def test_roots_are_classified_before_any_reader_sees_them(monkeypatch):
    assert remote.check_root("https://example.org/wds_cars", "wds") == "http"
    assert remote.check_root("nlphuji/winogavil", "hf") == "hub_id"
    assert remote.check_root("/data/wds_cars", "wds") == "local"
    for root, fmt in (("pipe:curl x", "wds"), ("gs://bucket/cars", "wds"), ("https://example.org/x", "hf")):
        with pytest.raises(PipelineError, match="is not usable for dataset.format"):
            remote.check_root(root, fmt)


def test_a_hub_address_is_read_as_repository_revision_and_folder_on_the_mirror(monkeypatch):
    address = remote.parse_hub_address("https://huggingface.co/datasets/clip-benchmark/wds_cars/tree/main/sub")
    assert (address.endpoint, address.repo_id, address.revision, address.folder) == \
        ("https://huggingface.co", "clip-benchmark/wds_cars", "main", "sub")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert remote.parse_hub_address("https://huggingface.co/datasets/a/b/tree/v1").endpoint == "http://127.0.0.1:9"
    assert remote.parse_hub_address("https://example.org/datasets/a/b/tree/v1") is None
    with pytest.raises(PipelineError, match="not of the form"):
        remote.parse_hub_address("https://huggingface.co/a/b")


def test_a_plain_url_gets_a_folder_named_by_its_hash(tmp_path):
    folder = remote.http_cache_folder("https://ex.org/../../etc;rm -rf/", tmp_path)
    assert folder.parent == tmp_path / "http" and folder.name.startswith("ex.org-") and "/" not in folder.name


def _fetch_archive(url: str, cache: str, results) -> None:
    try:
        folder = remote.fetched_archive(url, Path(cache))
        results.put(len(list(folder.rglob("*.txt"))))
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(repr(exc))


def test_jobs_fetching_one_archive_at_once_all_get_the_whole_copy(tmp_path):
    """Four processes ask for the same archive together: one fetches and unpacks, the others wait for its copy."""
    import io
    import multiprocessing
    import tarfile

    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "files.tar.gz", "w:gz") as archive:
        for index in range(500):
            data = f"file {index}\n".encode()
            info = tarfile.TarInfo(f"images/{index:05d}.txt")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with FakeHub({"org/files": served}) as hub:
        url = f"{hub.url.replace('127.0.0.1', 'localhost')}/plain/org/files/files.tar.gz"
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        workers = [context.Process(target=_fetch_archive, args=(url, str(tmp_path / "cache"), results)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        counts = [results.get(timeout=10) for _ in workers]
        fetched = sum(r.startswith("GET") for r in hub.requests)
    assert counts == [500] * 4 and fetched == 1
    assert not list((tmp_path / "cache").rglob(".unpacking-*"))
