"""Readers: undecodable samples named by shard and key (or skipped on request), and nlphuji's datasets from three
mirror layouts giving the same scores."""
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import datasets, remote
from pipeline.data.readers import hf, wds
from pipeline.errors import PipelineError
from pipeline.jobs.scoring import run_job
from pipeline.models.loading import ModelLoader, ModelSpec
from pipeline.tasks.classification import encode_classification_images
from tests import synthetic
from tests.conftest import compose_config


def corrupt_one_image(shard: Path) -> str:
    """Zero the bytes of the shard's third image, in place; returns its sample key."""
    with tarfile.open(shard) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".png")][2]
    with open(shard, "r+b") as handle:
        handle.seek(member.offset_data)
        handle.write(b"\0" * member.size)
    return member.name.removesuffix(".png")


@pytest.fixture
def damaged(tmp_path) -> tuple[Path, str]:
    root = synthetic.write_wds_classification(tmp_path / "damaged", per_class=2)
    return root, corrupt_one_image(root / "test" / "0.tar")


def test_reader_names_the_shard_and_key_of_an_undecodable_sample(damaged):
    root, key = damaged
    batches = list(wds.batches(remote.shard_paths(root, "test"), ("cls",), lambda image: torch.zeros(1), 8, 0))
    [unreadable] = [u for batch in batches for u in batch.unreadable]
    assert (unreadable.shard, unreadable.key) == ("0.tar", key)
    assert sum(len(batch.fields["cls"]) for batch in batches) == 23  # every other sample is read


def test_a_shard_cut_at_a_member_boundary_is_named_not_read_short(tmp_path, loader):
    root = synthetic.write_wds_classification(tmp_path / "cut", per_class=2)
    shard = root / "test" / "0.tar"
    with tarfile.open(shard) as tar:
        boundary = [m for m in tar.getmembers()][10].offset  # the start of a member: a valid but shorter tar
    shard.write_bytes(shard.read_bytes()[:boundary])
    with pytest.raises(PipelineError, match=r"shard 0.tar is truncated \(no tar end-of-archive marker\)"):
        encode_classification_images(loader, spec(root), "fp32", 8, 0)


def spec(root: Path, skip: bool = False) -> datasets.DatasetSpec:
    return datasets.DatasetSpec("damaged", "zeroshot_classification", str(root), "test", "acc1", skip_corrupt=skip)


@pytest.fixture(scope="module")
def loader(tiny_checkpoint):
    return ModelLoader(ModelSpec("tiny", "tiny-clip", str(tiny_checkpoint)), torch.device("cpu"))


def test_undecodable_sample_stops_the_embed_with_one_line_or_is_skipped_on_request(damaged, loader):
    root, key = damaged
    with pytest.raises(PipelineError) as failure:
        encode_classification_images(loader, spec(root), "fp32", 8, 0)
    message = str(failure.value)
    assert f"sample {key} in shard 0.tar" in message and "corrupt or truncated" in message and "\n" not in message
    assert "skip_corrupt=true" in message
    skipped = encode_classification_images(loader, spec(root, skip=True), "fp32", 8, 0)
    assert skipped.metrics == {"skipped_samples": 1.0}
    assert skipped.arrays["skipped_samples"].tolist() == [f"0.tar:{key}"]
    assert len(skipped.arrays["labels"]) == len(skipped.arrays["image_features"]) == 23


def test_a_model_failure_is_reported_as_a_model_error(loader, shapes_root, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    # The image tower itself: the embed stage runs it directly to keep pre-projection features too.
    monkeypatch.setattr(loader.get().model.visual, "forward", broken)
    with pytest.raises(PipelineError) as failure:
        encode_classification_images(loader, spec(shapes_root), "fp32", 8, 0)
    message = str(failure.value)
    assert "model error, not a data problem" in message and "cannot be multiplied" in message
    assert "corrupt" not in message


def test_two_workers_interleave_the_shards_and_each_sample_keeps_its_place(shapes_root):
    """The shapes split has two shards: two workers deliver their batches in turn, so the stage sorts by place."""
    read = lambda workers: list(wds.batches(remote.shard_paths(shapes_root, "test"), ("cls",),
                                            lambda image: torch.zeros(1), 7, workers))
    alone, two = read(0), read(2)
    places = [place for batch in two for place in batch.order]
    assert places != sorted(places)  # as delivered: interleaved
    in_order = [label for batch in alone for label in batch.fields["cls"]]
    labels = [label for batch in two for label in batch.fields["cls"]]
    assert [labels[i] for i in np.argsort(places)] == in_order
    assert [place for batch in alone for place in batch.order] == sorted(places)


def test_a_reading_failure_is_called_damage_only_where_it_is_a_decoding_error(tmp_path, loader):
    from PIL import Image

    from pipeline.stages.embed.images import read_failure

    root = synthetic.write_wds_classification(tmp_path / "fine", per_class=1)
    with pytest.raises(PipelineError) as failure:  # a setting no check caught: the reader's own TypeError
        encode_classification_images(loader, spec(root), "fp32", "abc", 0)
    message = str(failure.value)
    assert "TypeError" in message and "not a decoding error" in message and "corrupt" not in message
    (root / "test" / "0.tar").write_bytes(b"not a tar archive" * 100 + bytes(1024))  # ends as a tar ends
    with pytest.raises(PipelineError, match=r"not a readable tar file.*may be corrupt or truncated"):
        encode_classification_images(loader, spec(root), "fp32", 8, 0)
    causes = {}
    for name, attempt in (("image", lambda: Image.open(io.BytesIO(b"\x89PNG junk"))),
                          ("missing", lambda: open(tmp_path / "absent.png", "rb"))):
        try:
            attempt()
        except Exception as exc:
            causes[name] = str(read_failure(spec(root), exc))
    assert "corrupt" in causes["image"] and "corrupt" not in causes["missing"]
    assert "FileNotFoundError" in causes["missing"]


# -- nlphuji's datasets: three mirror layouts --------------------------------------------------------------
RETRIEVAL = ("retrieval/flickr_1k_test_image_text_retrieval", "nlphuji/flickr_1k_test_image_text_retrieval",
             synthetic.retrieval_rows)
WINOGAVIL = ("misc/winogavil", "nlphuji/winogavil", lambda: synthetic.winogavil_rows(games=8))


def write_mirrors(folder: Path, repo_id: str, rows_of) -> dict[str, Path]:
    """The same rows as a save_to_disk folder, a parquet folder and DataComp's hf_cache, each a data_root; the
    whole folder is then moved, so absolute paths written inside it point nowhere."""
    import datasets as hf

    rows, features = rows_of()
    name = repo_id.split("/")[1]
    written = folder / "written"
    hf.Dataset.from_dict(rows, features=features).save_to_disk(str(written / "save_to_disk" / name))
    synthetic._write_parquet(written / "parquet" / name, rows, features)
    synthetic.write_datacomp_hf_cache(written / "hf_cache_dir", repo_id, rows, features)
    shutil.move(written, folder / "moved")
    return {layout: folder / "moved" / layout for layout in ("save_to_disk", "parquet", "hf_cache_dir")}


@pytest.mark.parametrize("dataset, repo_id, rows_of", [RETRIEVAL, WINOGAVIL], ids=["retrieval", "winogavil"])
def test_every_mirror_layout_gives_the_same_scores(tmp_path, tiny_checkpoint, dataset, repo_id, rows_of):
    mirrors = write_mirrors(tmp_path, repo_id, rows_of)
    scores = {}
    for layout, data_root in mirrors.items():
        cfg = compose_config(f"dataset={dataset}", f"data_root={data_root}", f"model.pretrained={tiny_checkpoint}",
                             f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "num_workers=0",
                             f"tracking.artifact_location={tmp_path}/artifacts")
        scores[layout] = run_job(cfg).metrics
    assert not (mirrors["hf_cache_dir"] / repo_id.split("/")[1]).exists()  # read from hf_cache beside it
    assert scores["parquet"] == scores["save_to_disk"] == scores["hf_cache_dir"]
    # With 8 synthetic games some resamples lack a game size, so only the metrics themselves are all defined.
    values = {k: v for k, v in scores["parquet"].items() if not k.startswith(("ci_low/", "ci_high/"))}
    assert np.isfinite(list(values.values())).all()


def test_split_files_are_found_by_every_naming_the_hub_uses(tmp_path):
    for name in ("test/0000.parquet", "data/test-00000-of-00001.parquet", "flickr-test.parquet", "train/0.parquet",
                 "data/latest-00000.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [str(path.relative_to(tmp_path)) for path in hf.split_files(tmp_path, "test", ".parquet")]
    assert found == ["data/test-00000-of-00001.parquet", "flickr-test.parquet", "test/0000.parquet"]


def test_an_image_path_written_on_another_machine_is_re_rooted_into_the_mirror(tmp_path):
    image = tmp_path / "mirror" / "hf_cache" / "downloads" / "extracted" / "abc" / "img.jpg"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"jpeg")
    written_elsewhere = "/home/someone/datacomp/hf_cache/downloads/extracted/abc/img.jpg"
    assert hf.reroot(written_elsewhere, tmp_path / "mirror" / "hf_cache") == image
    assert hf.reroot("/nowhere/else.jpg", tmp_path / "mirror" / "hf_cache") == Path("/nowhere/else.jpg")
