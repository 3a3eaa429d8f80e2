"""The bundled assets: the tiny model trains deterministically, its checkpoint loads through open_clip, and
`python -m pipeline.offline` rebuilds nothing that is there."""
import shutil
import subprocess
import sys

import torch

from pipeline.models.loading import ModelSpec, load_model
from pipeline.offline import compositional
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


def test_the_command_builds_only_what_is_missing(tmp_path, shapes_root, tiny_checkpoint, compositional_root):
    """`python -m pipeline.offline` (`make assets`) on a folder that holds the assets already finds them there."""
    outputs = tmp_path / "outputs"
    shutil.copytree(shapes_root, outputs / "data" / "shapes")
    shutil.copytree(compositional_root, outputs / "data" / "compositional")
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
