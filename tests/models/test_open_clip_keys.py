"""open_clip models keep every key and label they had before transformers checkpoints came (issue 38): the library
enters the key material of transformers models only. The pinned keys were computed before that change."""
from omegaconf import OmegaConf

from pipeline.jobs.job_run import model_labels
from pipeline.models.loading import FEATURE_LIBRARIES, ModelSpec, library_versions
from pipeline.stages import embed

# Fixed builds, so the pins hold whatever is installed: what the key is made of, not the build, is pinned here.
VERSIONS = {"open_clip_torch": "3.3.0", "torch": "2.14.1", "torchvision": "0.29.1", "pillow": "13.0.0"}
CLASSES, TEMPLATE = ["cat", "dog"], "a photo of a {c}."


def spec(**model) -> ModelSpec:
    return ModelSpec.from_cfg(OmegaConf.create({"precision": "amp", **model}))


def keys(model: ModelSpec) -> tuple[str, str]:
    return (embed.classifier_key(embed.ModelKey(model.fingerprint, "fp32", VERSIONS), CLASSES, [TEMPLATE]),
            embed.template_key(embed.ModelKey(model.fingerprint, "amp-fp16", VERSIONS), CLASSES, TEMPLATE))


def test_a_pretrained_tags_fingerprint_keys_and_labels_are_unchanged():
    for library in ({}, {"library": "open_clip"}):
        tagged = spec(name="vit_b_32_openai", arch="ViT-B-32-quickgelu", pretrained="openai", **library)
        assert tagged.fingerprint == {"arch": "ViT-B-32-quickgelu", "weights": "openai"}
        assert keys(tagged) == ("0c3156aed9029c15f05fada7", "d69dd19f4ea6374cbf48becf")
        assert model_labels(tagged) == ({"model": "ViT-B-32-quickgelu", "pretrained": "openai",
                                         "model_name": "vit_b_32_openai"}, {})


def test_a_local_checkpoints_fingerprint_and_keys_are_unchanged(tmp_path):
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"clip-tables pinned checkpoint\n")
    local = spec(name="tiny", arch="tiny-clip", pretrained=str(checkpoint))
    assert local.fingerprint == {"arch": "tiny-clip",
                                 "weights": "sha256:cf77ce83e56c580a8dd74724c733430ed9dc1eb111767d814b0a40334bc92f11"}
    assert keys(local)[0] == "fd466b33278c33d29085b16f"


def test_the_feature_libraries_are_open_clips_four():
    assert FEATURE_LIBRARIES == ("open_clip_torch", "torch", "torchvision", "pillow")
    assert set(library_versions()) == set(FEATURE_LIBRARIES)
