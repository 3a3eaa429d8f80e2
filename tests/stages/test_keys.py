"""Cache keys, pinned: one job of each task type, keyed stage by stage from fixed material (a model tag, library
builds, dataset fingerprints), must keep the keys it had when the pins were taken. A refactor that moves code
between modules must leave every key byte-identical, or every lab's cache would be recomputed; a deliberate
change bumps a stage's version and updates its pin here, saying why in the commit."""
from __future__ import annotations

import importlib.metadata

import pytest

from pipeline import tasks
from pipeline.data.datasets import DatasetInfo, DatasetSpec
from pipeline.stages import classify, generate, score
from pipeline.stages.embed import (ModelKey, classifier_key, image_key, subset_key, template_key, template_set,
                                   texts_key)
from pipeline.stages.heads import HeadSpec
from pipeline.stages.heads.linear_probe import probe_key

LIBRARIES = {"open_clip_torch": "3.3.0", "torch": "2.14.1+cu128", "torchvision": "0.29.1+cu128", "pillow": "11.3.0"}
MODEL = ModelKey({"arch": "ViT-B-32-quickgelu", "weights": "openai"}, "amp", LIBRARIES)
TEXT_MODEL = ModelKey({"arch": "ViT-B-32-quickgelu", "weights": "openai"}, "amp", LIBRARIES)
# The environment's builds that some keys read themselves, fixed for the pins.
BUILDS = {"transformers": "5.0.0", "pycocoevalcap": "1.2"}


@pytest.fixture(autouse=True)
def fixed_builds(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: BUILDS.get(name) or real(name))


def info(task: str, fmt: str = "wds", split: str = "test", **spec: object) -> DatasetInfo:
    dataset = DatasetSpec(name=f"{task}-set", task=task, root="/data/x", split=split, main_metric="acc1",
                          format=fmt, **spec)
    return DatasetInfo(dataset, ["cat", "dog", "bird"], ["a photo of a {c}.", "a {c}."],
                       fingerprint={"name": dataset.name, "split": split, "content": "sha256:0123", "format": fmt})


def classification_chain(dataset: DatasetInfo) -> dict[str, str]:
    images = image_key(MODEL, dataset)
    text = classifier_key(TEXT_MODEL, dataset.classnames, dataset.templates)
    classified = classify.classify_key(dataset.spec.task, "amp", images, text)
    return {"image": images, "text": text, "classify": classified,
            "score": score.score_key(dataset.spec, classified, images)}


def texts_chain(dataset: DatasetInfo, model: ModelKey = TEXT_MODEL) -> dict[str, str]:
    images = image_key(MODEL, dataset)
    text = texts_key(model, dataset)
    classified = classify.classify_key(dataset.spec.task, "amp", images, text)
    return {"image": images, "text": text, "classify": classified,
            "score": score.score_key(dataset.spec, classified, images)}


def keys_of_each_task() -> dict[str, dict[str, str]]:
    shapes = info("zeroshot_classification")
    found = {"zeroshot_classification": classification_chain(shapes),
             "zeroshot_classification, hf": classification_chain(info("zeroshot_classification", "hf")),
             "templates": {"set": template_set(TEXT_MODEL, shapes.classnames),
                           "one": template_key(TEXT_MODEL, shapes.classnames, shapes.templates[0])},
             "class subset": {"image": subset_key(image_key(MODEL, shapes), (2, 0))}}
    wilds = info("zeroshot_classification", metadata_fields=("region", "y"),
                 group_metrics=({"name": "worst_region_acc", "field": "region"},), extra_metrics=("f1_macro",))
    found["zeroshot_classification, groups"] = classification_chain(wilds)
    head = HeadSpec("linear_probe", k_shot=4, seed=1)
    train = image_key(MODEL, info("zeroshot_classification", split="train"))
    test = image_key(MODEL, shapes)
    probe = probe_key(head, train, test, None)
    found["linear_probe"] = {"train": train, "probe": probe, "score": score.score_key(shapes.spec, probe, test)}
    found["zeroshot_retrieval"] = texts_chain(info("zeroshot_retrieval"))
    found["zeroshot_retrieval, lines"] = texts_chain(info("zeroshot_retrieval", "lines"),
                                                     ModelKey(TEXT_MODEL.model, "amp", LIBRARIES, "jpn_Jpan"))
    found["winogavil"] = texts_chain(info("winogavil", "hf"))
    found["image_caption_selection"] = texts_chain(info("image_caption_selection", "sugar_crepe"))
    found["multilabel_classification"] = classification_chain(info("multilabel_classification", "voc"))
    captions = info("captioning")
    settings = {"generation_type": "beam_search", "num_beams": 6, "num_beam_groups": 3, "seq_len": 30,
                "min_seq_len": 5, "repetition_penalty": 1.0}
    generated = generate.generate_key(MODEL, captions, settings)
    task = tasks.get("captioning")
    found["captioning"] = {"generate": generated, "score": score.score_key(
        captions.spec, generated, generated, task.score_version, task.score_material({"spice": False}))}
    return found


# Taken at afef2bc, before issue 36 moved each task's code into pipeline/tasks/.
PINNED = {
    "zeroshot_classification": {
        "image": "96ac1d55de76f0eed3b0c164",
        "text": "6afae57fcb2e8dd3c10ca2df",
        "classify": "4c55cb5a7b40dbc3c96dc82a",
        "score": "c44c812ce469a9df8c6a7a16",
    },
    "zeroshot_classification, hf": {
        "image": "bac95dcbc60169c888fc05d8",
        "text": "6afae57fcb2e8dd3c10ca2df",
        "classify": "30931d56498bd116e6079947",
        "score": "833af9cd96e27c2bc9214d1f",
    },
    "templates": {
        "set": "0c141a1d539e2a18ecf068ca",
        "one": "1020ad41eda2451ebd18aed8",
    },
    "class subset": {
        "image": "e79a5dc5a10bb8d1eb0b8692",
    },
    "zeroshot_classification, groups": {
        "image": "96ac1d55de76f0eed3b0c164",
        "text": "6afae57fcb2e8dd3c10ca2df",
        "classify": "4c55cb5a7b40dbc3c96dc82a",
        "score": "33aed4e47a47629d6d5316fe",
    },
    "linear_probe": {
        "train": "03d59a5fd06bbd762b2bd924",
        "probe": "6eacb35db15d215e16138c91",
        "score": "0442aec7c55a0a23eef2ace5",
    },
    "zeroshot_retrieval": {
        "image": "ff8a4e0a67426389e82a2497",
        "text": "293787bf48d148aed95616d7",
        "classify": "77d124f6c9e3216977bac302",
        "score": "271a91843f2ede0cca4608e1",
    },
    "zeroshot_retrieval, lines": {
        "image": "36048044a6fddc4bac9f31b7",
        "text": "6818b848d0209e540da2eb55",
        "classify": "3c5072f77c699026d8ef6ddb",
        "score": "2f4fc832e3b8350b8160833b",
    },
    "winogavil": {
        "image": "863f2a97bcb479b265ce09c2",
        "text": "86e807f420854a8b72ecbd50",
        "classify": "8ffaeea67f9c1ff5b69652e2",
        "score": "5baac6e2128ca0650a54350c",
    },
    "image_caption_selection": {
        "image": "44ff2b284bc43725b108fc66",
        "text": "479a51fc7a914c8e63760358",
        "classify": "c35e67e5b1134aaa2f587af7",
        "score": "b88b65fb2c8b75fb67f81a48",
    },
    "multilabel_classification": {
        "image": "5d7e91aa4f8d46a4a41654ef",
        "text": "6afae57fcb2e8dd3c10ca2df",
        "classify": "e9c1461310160daac75cc92c",
        "score": "0dc6e02746c212bae15619b0",
    },
    "captioning": {
        "generate": "1c6aea3d6b190a7f9770ab63",
        "score": "b6d3963c1042819679bf7ef9",
    },
}


def test_every_tasks_keys_are_the_pinned_ones():
    assert keys_of_each_task() == PINNED
