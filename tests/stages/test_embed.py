"""Embed keys: what they hold (effective precision, library builds), and what they ignore."""
import shutil

from pipeline.data import datasets
from pipeline.models.loading import ModelSpec, library_versions
from pipeline.stages import embed


def shapes_info(root) -> datasets.DatasetInfo:
    return datasets.describe(datasets.DatasetSpec("shapes", "zeroshot_classification", str(root), "test", "acc1"))


def model_key(checkpoint, precision="fp32", **versions) -> embed.ModelKey:
    spec = ModelSpec("tiny", "tiny-clip", str(checkpoint))
    return embed.ModelKey(spec.fingerprint, precision, {**library_versions(), **versions})


def test_image_and_text_keys_carry_the_effective_precision(shapes_root, tiny_checkpoint):
    info = shapes_info(shapes_root)
    fp32, bf16 = model_key(tiny_checkpoint), model_key(tiny_checkpoint, "amp-bf16")
    assert embed.image_key(fp32, info) != embed.image_key(bf16, info)
    assert embed.classifier_key(fp32, info.classnames, info.templates) != embed.classifier_key(bf16, info.classnames,
                                                                                                info.templates)
    assert embed.texts_key(fp32, info) != embed.texts_key(bf16, info)


def test_a_different_library_build_never_shares_features(shapes_root, tiny_checkpoint):
    info = shapes_info(shapes_root)
    installed = library_versions()
    assert set(installed) == {"open_clip_torch", "torch", "torchvision", "pillow"}
    key = embed.image_key(model_key(tiny_checkpoint), info)
    for name, version in installed.items():
        assert embed.image_key(model_key(tiny_checkpoint, **{name: version + "+other"}), info) != key, name
        assert embed.texts_key(model_key(tiny_checkpoint, **{name: version + "+other"}), info) != \
            embed.texts_key(model_key(tiny_checkpoint), info), name


def test_keys_follow_the_checkpoint_content_not_its_path(shapes_root, tiny_checkpoint, tmp_path):
    info = shapes_info(shapes_root)
    copy = tmp_path / "renamed.pt"
    shutil.copy(tiny_checkpoint, copy)
    assert embed.image_key(model_key(copy), info) == embed.image_key(model_key(tiny_checkpoint), info)
