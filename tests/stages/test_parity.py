"""Parity: our stages reproduce clip_benchmark's zeroshot_classification.evaluate on the same checkpoint and data."""
import numpy as np
import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification

from pipeline.data import datasets, prompts
from pipeline.models.loading import ModelLoader, ModelSpec
from pipeline.stages.score import metrics
from pipeline.stages.classify import zero_shot_logits
from pipeline.stages.embed import encode_classifier
from pipeline.tasks.classification import encode_classification_images


@pytest.fixture(scope="module")
def loader(tiny_checkpoint):
    return ModelLoader(ModelSpec("tiny", "tiny-clip", str(tiny_checkpoint), "fp32"), torch.device("cpu"))


@pytest.mark.parametrize("prompt_source", ["dataset", "openai"])
def test_pipeline_matches_clip_benchmark_evaluate(loader, shapes_root, prompt_source):
    spec = datasets.DatasetSpec("shapes", "zeroshot_classification", str(shapes_root), "test", "acc1")
    info = datasets.describe(spec)
    if prompt_source == "dataset":
        templates = info.templates
    else:
        templates = prompts._from_open_clip("OPENAI_IMAGENET_TEMPLATES")

    loaded = loader.get()
    # The reference: clip_benchmark's own code path, fp32 (amp off), as `clip_benchmark eval --no_amp` runs it.
    reference_data = datasets.build(spec, loaded.preprocess)
    dataloader = torch.utils.data.DataLoader(reference_data.batched(64), batch_size=None, num_workers=0)
    reference = zeroshot_classification.evaluate(loaded.model, dataloader, loaded.tokenizer, info.classnames,
                                                 templates, "cpu", amp=False)

    images = encode_classification_images(loader, spec, "fp32", batch_size=32, num_workers=0).arrays
    classifier = encode_classifier(loader, info.classnames, templates, "fp32").arrays
    ours = metrics.classification_metrics(zero_shot_logits(images, classifier), images["labels"])

    for name in ("acc1", "acc5", "mean_per_class_recall"):
        assert ours[name] == pytest.approx(reference[name], abs=1e-6), name
    assert ours["acc1"] >= 0.8  # the tiny model is good enough to expose label or ordering mix-ups


def test_clip_benchmark_protocol_matches_its_default_amp_on_cpu(loader, shapes_root):
    """protocol=clip_benchmark on CPU is clip_benchmark 1.6.2's `evaluate(..., amp=True)`: both towers and the logits
    under torch.autocast("cpu"), i.e. bfloat16 (metrics/zeroshot_classification.py: zero_shot_classifier and
    run_classification). acc1 agrees within one sample, logits within bfloat16's precision; fp32 is a different
    computation."""
    from omegaconf import OmegaConf

    from pipeline.models import precision
    from tests.conftest import CONF

    spec = datasets.DatasetSpec("shapes", "zeroshot_classification", str(shapes_root), "test", "acc1")
    info = datasets.describe(spec)
    loaded = loader.get()
    dataloader = torch.utils.data.DataLoader(datasets.build(spec, loaded.preprocess).batched(64), batch_size=None)
    reference = zeroshot_classification.evaluate(loaded.model, dataloader, loaded.tokenizer, info.classnames,
                                                 info.templates, "cpu", amp=True)

    protocol = OmegaConf.to_container(OmegaConf.load(CONF / "protocol" / "clip_benchmark.yaml"))
    recipe = precision.recipe(protocol, spec.task, "cpu")
    assert recipe == precision.Recipe("amp-bf16", "amp-bf16", "amp-bf16")
    images = encode_classification_images(loader, spec, recipe.image, batch_size=32, num_workers=0).arrays
    classifier = encode_classifier(loader, info.classnames, info.templates, recipe.text).arrays
    assert str(images["image_features__dtype"]) == "bfloat16"
    logits = zero_shot_logits(images, classifier, recipe)
    ours = metrics.classification_metrics(logits, images["labels"])
    assert abs(ours["acc1"] - reference["acc1"]) <= 1 / len(images["labels"])
    # and logit by logit, within one bfloat16 step at the logits' scale (0.5 for |logit| in [64, 128)): prompts are
    # encoded trimmed to their batch's longest one, so a few bfloat16 sums round the other way than clip_benchmark's
    # full-context ones, and the product carries that step
    reference_classifier = zeroshot_classification.zero_shot_classifier(loaded.model, loaded.tokenizer,
                                                                        info.classnames, info.templates, "cpu")
    reference_logits, _ = zeroshot_classification.run_classification(loaded.model, reference_classifier, dataloader,
                                                                     "cpu", amp=True)
    np.testing.assert_allclose(logits, reference_logits.numpy(), rtol=0, atol=0.5)
    fp32_logits = zero_shot_logits({"image_features": images["image_features"]}, {"classifier": classifier["classifier"]})
    assert not (fp32_logits == logits).all()
