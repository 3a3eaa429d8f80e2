"""The bundled assets: the tiny model trains deterministically, its checkpoint loads through open_clip, and
`python -m pipeline.offline` rebuilds nothing that is there."""
import shutil
import subprocess
import sys

import torch

from pipeline.models.loading import ModelSpec, load_model
from pipeline.offline import captions, compositional, tiny_coca
from pipeline.offline.tiny_clip import train


def test_training_is_deterministic():
    first, second = train(steps=15, pool_per_class=4), train(steps=15, pool_per_class=4)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_checkpoint_loads_with_open_clips_loader(tiny_checkpoint):
    loaded = load_model(ModelSpec("tiny", "tiny-clip", str(tiny_checkpoint)), torch.device("cpu"))
    saved = torch.load(tiny_checkpoint, weights_only=True)["state_dict"]
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_the_command_builds_only_what_is_missing(tmp_path, shapes_root, tiny_checkpoint, compositional_root,
                                                 captions_root, tiny_coca_checkpoint):
    """`python -m pipeline.offline` (`make assets`) on a folder that holds the assets already finds them there."""
    outputs = tmp_path / "outputs"
    shutil.copytree(shapes_root, outputs / "data" / "shapes")
    shutil.copytree(compositional_root, outputs / "data" / "compositional")
    shutil.copytree(captions_root, outputs / "data" / "captions")
    shutil.copytree(tiny_checkpoint.parent, outputs / "models")
    before = {path: path.stat().st_mtime_ns for path in outputs.rglob("*") if path.is_file()}
    done = subprocess.run([sys.executable, "-m", "pipeline.offline", "--outputs", str(outputs)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"dataset: {outputs / 'data' / 'shapes'}" in done.stdout
    assert f"checkpoint: {outputs / 'models' / 'tiny-clip.pt'}" in done.stdout
    assert {path: path.stat().st_mtime_ns for path in outputs.rglob("*") if path.is_file()} == before


def test_the_compositional_stand_ins_are_deterministic_and_in_their_sources_layouts(tmp_path):
    first, second = (compositional.ensure_compositional(tmp_path / name) for name in ("a", "b"))
    for subset in compositional.SUGAR_CREPE_SUBSETS:
        assert (first[0] / f"{subset}.json").read_text() == (second[0] / f"{subset}.json").read_text()
    assert len(list((first[0] / "val2017").glob("0000*.jpg"))) == 24
    [parquet] = first[1].glob("data/test-*.parquet")
    import pyarrow.parquet as pq

    assert pq.read_table(parquet).column_names == ["id", "image_0", "image_1", "caption_0", "caption_1"]


def test_the_caption_stand_in_is_deterministic_and_in_clip_benchmarks_layout(tmp_path):
    import webdataset as wds

    first, second = (captions.ensure_captions(tmp_path / name) for name in ("a", "b"))
    assert first == tmp_path / "a" / "wds_mscoco_captions"  # where data_root=<folder> has dataset=mscoco_captions look
    samples, again = ([{k: v for k, v in s.items() if not k.startswith("__")}
                       for s in wds.WebDataset(str(folder / "test" / "0.tar"), shardshuffle=False)]
                      for folder in (first, second))
    assert samples == again  # the tar headers hold the time of writing; the samples do not
    assert len(samples) == 24 and all(set(s) >= {"jpg", "txt"} for s in samples)
    assert [len(s["txt"].decode().splitlines()) for s in samples] == [5] * 24


def test_the_tiny_coca_is_the_same_for_a_seed_and_its_checkpoint_loads(tiny_coca_checkpoint):
    first, second = tiny_coca.build(0), tiny_coca.build(0)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    projection = first.text_decoder.text_projection
    assert torch.isfinite(projection).all() and abs(projection.std().item() - 64 ** -0.5) < 0.01
    loaded = load_model(ModelSpec("tiny_coca", "tiny-coca", str(tiny_coca_checkpoint)), torch.device("cpu"))
    saved = torch.load(tiny_coca_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(value, saved[name]) for name, value in loaded.model.state_dict().items())
