"""Per-template text embeddings: a classifier assembled from them is open_clip's, and shared templates are
encoded once, found by one search on their shared tag."""
from collections import Counter

import open_clip
import pytest
import torch
from mlflow import MlflowClient

from pipeline.data import prompts
from pipeline.models.loading import LoadedModels, ModelLoader, ModelSpec, library_versions
from pipeline.offline.shapes import CLASSNAMES
from pipeline.stages import StageContext, embed
from pipeline.stages.embed import texts
from pipeline.store.cache import StageCache

T1, T2, T3 = "a photo of a {c}.", "a drawing of a {c}.", "itap of the {c}."
TAGS = {"model": "tiny-clip", "pretrained": "tiny-clip.pt", "model_name": "tiny", "dataset": "shapes", "prompts": "x"}


@pytest.fixture
def loader(tiny_checkpoint):
    return ModelLoader(ModelSpec("tiny", "tiny-clip", str(tiny_checkpoint), "fp32"), torch.device("cpu"), LoadedModels())


@pytest.mark.parametrize("templates", [prompts._from_open_clip("OPENAI_IMAGENET_TEMPLATES"), [T1, T2, T1, T3]])
def test_assembled_classifier_equals_open_clips_builder(loader, templates):
    loaded = loader.get()
    with torch.no_grad():
        expected = open_clip.build_zero_shot_classifier(loaded.model, loaded.tokenizer, CLASSNAMES,
                                                        prompts.fillers(templates), device="cpu")
    ours = embed.encode_classifier(loader, CLASSNAMES, templates, "fp32").arrays["classifier"]
    assert ours.shape == tuple(expected.shape)
    assert abs(ours - expected.numpy()).max() <= 1e-6


def test_shared_templates_are_encoded_once_and_known_ones_never_again(store, loader, monkeypatch):
    encoded: list[str] = []
    real = texts.encode_templates

    def counting(loaded, classnames, templates, precision):
        encoded.extend(templates)
        return real(loaded, classnames, templates, precision)

    monkeypatch.setattr(texts, "encode_templates", counting)
    cache = StageCache(store)
    model = embed.ModelKey(loader.spec.fingerprint, "fp32", library_versions())

    def classifier(templates: list[str], loader=loader):
        return embed.embed_classifier(StageContext(cache, TAGS, {}), loader, CLASSNAMES, templates, model)

    classifier([T1, T2])
    classifier([T2, T3])
    assert encoded == [T1, T2, T3]

    # A new combination of known templates: the classifier is looked up, claimed (the claims listed for a ticket
    # and again to decide, the classifier looked up again under the claim), and its templates found with one
    # search by their shared tag; nothing encoded, the model never loaded.
    fresh = ModelLoader(loader.spec, loader.device, LoadedModels())
    searches = Counter()
    search = MlflowClient.search_runs

    def counted(self, *args, **kwargs):
        searches.update([kwargs["filter_string"].split(" ")[0]])
        return search(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "search_runs", counted)
    combined = classifier([T3, T1], loader=fresh)
    assert encoded == [T1, T2, T3] and fresh.registry.loaded is None
    assert searches == Counter({"tags.cache_key": 2, "tags.claim_group": 2, f"tags.{embed.TEMPLATE_SET_TAG}": 1})
    assert abs(combined["classifier"] - embed.encode_classifier(loader, CLASSNAMES, [T3, T1], "fp32").arrays["classifier"]).max() <= 1e-6

    runs = store.client.search_runs([store.experiment_id], filter_string="tags.modality = 'template'")
    assert sorted(run.data.tags["template"] for run in runs) == sorted([T1, T2, T3])
    assert len({run.data.tags[embed.TEMPLATE_SET_TAG] for run in runs}) == 1
