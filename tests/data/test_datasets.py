"""The synthetic dataset's on-disk layout, clip_benchmark's reader over it, and dataset errors."""
import shutil
from pathlib import Path

import pytest

from pipeline.data import datasets
from pipeline.errors import PipelineError
from pipeline.offline import shapes


def spec(root: Path, split: str = "test") -> datasets.DatasetSpec:
    return datasets.DatasetSpec("shapes", "zeroshot_classification", str(root), split, "acc1")


def test_layout_is_clip_benchmarks(shapes_root):
    for split, (per_class, _) in shapes.SPLITS.items():
        nshards = int((shapes_root / split / "nshards.txt").read_text())
        assert nshards == 2 and all((shapes_root / split / f"{i}.tar").is_file() for i in range(nshards))
    assert (shapes_root / "classnames.txt").read_text().splitlines() == shapes.CLASSNAMES
    assert (shapes_root / "zeroshot_classification_templates.txt").read_text().splitlines() == shapes.TEMPLATES


def test_reader_yields_every_test_sample_with_labels(shapes_root):
    info = datasets.describe(spec(shapes_root))
    assert info.classnames == shapes.CLASSNAMES and info.templates == shapes.TEMPLATES
    labels = [int(label) for _, label in datasets.build(spec(shapes_root))]
    per_class = shapes.SPLITS["test"][0]
    assert sorted(labels) == sorted(list(range(len(shapes.CLASSNAMES))) * per_class)


def test_generator_is_deterministic():
    a, b = shapes.generate(2, seed=7), shapes.generate(2, seed=7)
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    assert [s.image.tobytes() for s in a] != [s.image.tobytes() for s in shapes.generate(2, seed=8)]


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(PipelineError, match=str(tmp_path / "absent")):
        datasets.describe(spec(tmp_path / "absent"))


def test_missing_split_and_shard_are_named(shapes_root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shapes_root, copy)
    with pytest.raises(PipelineError, match="nshards.txt"):
        datasets.check_local_layout(spec(copy, split="validation"))
    (copy / "test" / "1.tar").unlink()
    with pytest.raises(PipelineError, match="1.tar"):
        datasets.check_local_layout(spec(copy))


def test_fingerprint_follows_content_not_location(shapes_root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shapes_root, copy)
    assert datasets.fingerprint(spec(copy)) == datasets.fingerprint(spec(shapes_root))
    assert datasets.fingerprint(spec(copy, "train")) != datasets.fingerprint(spec(copy))
    with open(copy / "test" / "0.tar", "ab") as handle:
        handle.write(b"\0" * 512)
    assert datasets.fingerprint(spec(copy)) != datasets.fingerprint(spec(shapes_root))


def test_remote_root_is_keyed_by_url():
    remote = datasets.DatasetSpec("cifar10", "zeroshot_classification",
                                  "https://huggingface.co/datasets/clip-benchmark/wds_cifar10/tree/main", "test", "acc1")
    assert remote.is_remote and datasets.fingerprint(remote)["root"] == remote.root
    datasets.check_local_layout(remote)  # no local checks for URLs


def test_blank_lines_in_classnames_and_templates_are_dropped(shapes_root, tmp_path):
    """clip-benchmark 1.4.0 (DataComp's pin) drops blank lines (datasets/builder.py:630); 1.6.2 keeps them, and
    a trailing blank line becomes a phantom class "" that the argmax can pick."""
    from clip_benchmark.datasets.builder import build_dataset

    copy = tmp_path / "copy"
    shutil.copytree(shapes_root, copy)
    (copy / "classnames.txt").write_text("\n".join(shapes.CLASSNAMES) + "\n\n\n")
    (copy / "zeroshot_classification_templates.txt").write_text("\n" + "\n\n".join(shapes.TEMPLATES) + "\n \n")
    phantom = build_dataset("wds/shapes", root=str(copy), split="test", task="zeroshot_classification")
    assert "" in phantom.classes  # what clip_benchmark 1.6.2 itself would do
    info = datasets.describe(spec(copy))
    assert info.classnames == shapes.CLASSNAMES and info.templates == shapes.TEMPLATES


def test_skip_corrupt_and_split_are_checked_before_anything_runs(tmp_path):
    base = {"name": "x", "task": "zeroshot_classification", "root": str(tmp_path), "split": "test", "main_metric": "acc1"}
    with pytest.raises(PipelineError, match="skip_corrupt=true applies to webdatasets"):
        datasets.DatasetSpec.from_cfg({**base, "format": "folder", "skip_corrupt": True})
    with pytest.raises(PipelineError, match="dataset.split='../x' is not a split name"):
        datasets.DatasetSpec.from_cfg({**base, "split": "../x"})
    with pytest.raises(PipelineError, match="not usable for dataset.format=folder: give a local folder"):
        datasets.DatasetSpec.from_cfg({**base, "format": "folder", "root": "http://example.org/x"})
    with pytest.raises(PipelineError, match=r"not usable for dataset.format=tfds: give a local folder \(TFDS' data_dir\)"):
        datasets.DatasetSpec.from_cfg({**base, "format": "tfds", "root": "gs://tfds-data/datasets"})
