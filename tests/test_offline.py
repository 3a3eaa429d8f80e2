"""The bundled assets: the tiny model trains deterministically, and its checkpoint loads through open_clip."""
import torch

from pipeline.models import ModelSpec, load_model
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
