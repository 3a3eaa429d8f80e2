"""transformers checkpoints through the pipeline (issue 38): the embed stage's features are the checkpoint's own
`get_image_features` / `get_text_features` on what its own image processor and tokenizer make, for tiny random
CLIPModel, SiglipModel and Siglip2Model (NaFlex) checkpoints built here from configs; a CLIPModel converted from
the bundled open_clip model scores as that model does, in real jobs."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from omegaconf import OmegaConf
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.jobs.scoring import run_job
from pipeline.models import hf_checkpoints
from pipeline.models.loading import LoadedModels, ModelLoader, ModelSpec
from pipeline.models.transformers_clip import pooled
from pipeline.stages.embed import projection, texts
from pipeline.store import artifacts, tracking
from tests import synthetic
from tests.conftest import CONF, compose_config
from tests.models import tiny_hf

FAMILIES = ("CLIPModel", "SiglipModel", "Siglip2Model")
CLASSES = ["circle", "red square", "ellipse",
           "triangle drawn again and again on a white background until it is far too long to fit in the context"]
TEMPLATES = ["a photo of a {c}.", "{c}"]
TEXTS = ["a photo of a circle.", "a drawing of a red square.", "an ellipse", "the heart is large",
         "a blurry photo of the triangle, drawn again and again on a white background until it is too long to fit"]
SIZES = [(32, 32), (48, 32), (24, 40), (64, 20), (33, 31), (16, 16), (40, 40)]  # NaFlex keeps each aspect ratio


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("transformers")
    return {"CLIPModel": tiny_hf.tiny_clip(root / "clip"), "SiglipModel": tiny_hf.tiny_siglip(root / "siglip"),
            "Siglip2Model": tiny_hf.tiny_siglip2(root / "siglip2")}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> tuple[Path, list[Image.Image]]:
    """A webdataset of images of several sizes (one grey) with a template file, and the images as PIL reads them."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    made = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]
    made[5] = made[5].convert("L")
    (root / "test").mkdir()
    with wds.TarWriter(str(root / "test" / "0.tar")) as sink:
        for i, image in enumerate(made):
            buffer = io.BytesIO()
            image.save(buffer, format="png")
            sink.write({"__key__": f"s{i:04d}", "png": buffer.getvalue(), "cls": i % len(CLASSES)})
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return root, [image.convert("RGB") for image in made]


def reference(folder: Path, family: str):
    """The checkpoint as transformers users load it, apart from the pipeline's loader."""
    import transformers

    model = getattr(transformers, family).from_pretrained(folder, dtype=torch.float32).eval()
    return (model, transformers.AutoImageProcessor.from_pretrained(folder),
            transformers.AutoTokenizer.from_pretrained(folder))


def reference_texts(folder: Path, family: str, strings: list[str]) -> torch.Tensor:
    """Normalized `get_text_features` of `strings` tokenized as the checkpoint's processor does (padded to the
    context). SigLIP's text towers take the ids alone (big_vision trained them without a padding mask)."""
    model, _, tokenizer = reference(folder, family)
    context = 20 if family == "CLIPModel" else 16
    tokens = tokenizer(strings, padding="max_length", truncation=True, max_length=context, return_tensors="pt")
    fields = ("input_ids", "attention_mask") if family == "CLIPModel" else ("input_ids",)
    with torch.no_grad():
        return F.normalize(pooled(model.get_text_features(**{f: tokens[f] for f in fields})), dim=-1)


def loader_for(folder: Path, family: str) -> ModelLoader:
    return ModelLoader(ModelSpec("tiny_hf", family, str(folder), "fp32", library="transformers"), "cpu", LoadedModels())


def job(tmp_path: Path, folder: Path, family: str, *overrides: str):
    return compose_config("model=transformers/clip-vit-base-patch32", f"model.arch={family}", f"model.pretrained={folder}",
                          "model.name=tiny_hf", "protocol=fp32", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                          f"tracking.artifact_location={tmp_path}/artifacts", "num_workers=0", "device=cpu", *overrides)


def stage_arrays(tmp_path: Path, **tags: str) -> list[tuple[dict[str, str], dict[str, np.ndarray]]]:
    """(tags, arrays) of the stage runs carrying `tags`."""
    store = tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "clip-tables")
    query = " and ".join(f"tags.{name} = '{value}'" for name, value in tags.items())
    return [(run.data.tags, artifacts.load(run, store.uri).arrays) for run in tracking.search_all(store, query)]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_jobs_image_and_text_features_are_the_checkpoints_own(family, checkpoints, pictures, tmp_path):
    """A zero-shot job's stored features against `get_image_features` on the processor's pixels and
    `get_text_features` on the tokenizer's ids, in fp32 (the bound is 1e-5)."""
    root, pil = pictures
    result = run_job(job(tmp_path, checkpoints[family], family, "dataset=wds", "dataset.name=pictures", "batch_size=3",
                         f"dataset.root={root}", "prompts=file", f"prompts.path={root / 'templates.txt'}"))
    [(_, image)] = stage_arrays(tmp_path, stage="embed", modality="image")
    templates = {tags["template"]: arrays["embeddings"]
                 for tags, arrays in stage_arrays(tmp_path, stage="embed", modality="template")}

    model, processor, _ = reference(checkpoints[family], family)
    with torch.no_grad():
        expected = pooled(model.get_image_features(**processor(images=pil, return_tensors="pt"))).numpy()
    image_diff = np.abs(image["image_features"] - expected).max()
    filled = [template.format(c=name) for template in TEMPLATES for name in CLASSES]
    expected_texts = reference_texts(checkpoints[family], family, filled).numpy().reshape(len(TEMPLATES), len(CLASSES), -1)
    text_diff = max(np.abs(templates[template] - want).max() for template, want in zip(TEMPLATES, expected_texts))
    assert image_diff <= 1e-5 and text_diff <= 1e-5, (image_diff, text_diff)
    assert image["labels"].tolist() == [i % len(CLASSES) for i in range(len(SIZES))] and 0 <= result.value <= 1
    if family == "CLIPModel":  # the paper's probe features: the pooled output visual_projection receives
        with torch.no_grad():
            pre = model.vision_model(**processor(images=pil, return_tensors="pt")).pooler_output
        assert np.abs(image[projection.PRE_PROJECTION] - pre.numpy()).max() <= 1e-5
    else:  # SigLIP's pooling head is its last layer: its embedding serves as pre-projection feature
        assert projection.PRE_PROJECTION not in image and projection.tower_kind(family) == projection.RESNET


@pytest.mark.parametrize("family", FAMILIES)
def test_encoded_strings_are_the_checkpoints_own(family, checkpoints):
    encoded = texts.encode_strings(loader_for(checkpoints[family], family).get(), TEXTS, "fp32")
    assert (encoded - reference_texts(checkpoints[family], family, TEXTS)).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_both_towers_follow_the_precision_protocols(family, checkpoints, pictures):
    """bfloat16 autocast on CPU (clip_benchmark's protocol) changes the features, which keep their dtype."""
    loaded = loader_for(checkpoints[family], family).get()
    full, low = (texts.encode_strings(loaded, TEXTS, label) for label in ("fp32", "amp-bf16"))
    assert full.dtype == torch.float32 and low.dtype == torch.bfloat16
    assert 0 < (full - low.float()).abs().max() < 0.05
    batch = torch.stack([loaded.preprocess(image) for image in pictures[1]])
    with torch.no_grad():
        full = loaded.model.encode_image(batch, normalize=True)
        with loaded.autocast("amp-bf16"):
            low = loaded.model.encode_image(batch, normalize=True)
    assert low.dtype == torch.bfloat16 and 0 < (full - low.float()).abs().max() < 0.05


def test_every_transformers_preset_names_a_family_the_installed_transformers_has():
    presets = sorted((CONF / "model" / "transformers").glob("*.yaml"))
    assert len(presets) >= 10
    families = set()
    for preset in presets:
        model = compose_config(f"model=transformers/{preset.stem}").model
        spec = ModelSpec.from_cfg(model)
        assert spec.is_transformers and spec.pretrained and model.name == f"transformers/{preset.stem}"
        families.add(spec.arch)
    assert families == set(hf_checkpoints.FAMILIES)


def test_resolving_a_transformers_job_imports_no_torch(checkpoints):
    """A job whose stages are all served never builds the model: naming and fingerprinting it imports no torch (nor
    open_clip; transformers' own package is lazy, and finding a family's module imports none of its code)."""
    code = ("import sys\nfrom omegaconf import OmegaConf\nfrom pipeline.models.loading import ModelSpec\n"
            "from pipeline.stages.embed import projection\n"
            f"spec = ModelSpec.from_cfg(OmegaConf.create({{'name': 'm', 'library': 'transformers', 'arch': "
            f"'CLIPModel', 'pretrained': {str(checkpoints['CLIPModel'])!r}}}))\n"
            "spec.fingerprint, spec.library_labels, projection.tower_kind(spec.arch)\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'transformers.models.clip.modeling_clip') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


def test_equal_texts_share_their_features_and_long_ones_are_cut_at_the_context(checkpoints):
    loaded = loader_for(checkpoints["CLIPModel"], "CLIPModel").get()
    tokens = loaded.tokenizer([TEXTS[4], TEXTS[4] + " and more", TEXTS[0]])
    assert tokens.shape == (3, 2, 20) and torch.equal(tokens[0], tokens[1])  # cut at 20 tokens, end token kept
    encoded = texts.encode_strings(loaded, [TEXTS[4], TEXTS[4] + " and more", TEXTS[0]], "fp32")
    assert torch.equal(encoded[0], encoded[1]) and not torch.equal(encoded[0], encoded[2])


def test_a_model_of_another_family_a_missing_class_and_a_missing_folder_are_refused(checkpoints, monkeypatch, tmp_path):
    def spec(**model):
        return ModelSpec.from_cfg(OmegaConf.create({"name": "m", "library": "transformers", **model}))

    with pytest.raises(PipelineError, match="a 'siglip' model, not CLIPModel's 'clip'; use model.arch=SiglipModel"):
        spec(arch="CLIPModel", pretrained=str(checkpoints["SiglipModel"])).fingerprint
    with pytest.raises(PipelineError, match="not a transformers family this pipeline evaluates; use one of CLIPModel"):
        spec(arch="BlipModel", pretrained=str(checkpoints["CLIPModel"]))
    # a transformers release without the family's class (SigLIP 2 before 4.49): refused in one line
    monkeypatch.setitem(hf_checkpoints.FAMILIES, "Siglip2Model",
                        hf_checkpoints.Family("Siglip2Model", "siglip2_not_here", "siglip2", "SigLIP 2 NaFlex", ()))
    with pytest.raises(PipelineError, match=r"^transformers \S+ has no Siglip2Model \(SigLIP 2 NaFlex\); install"):
        spec(arch="Siglip2Model", pretrained=str(checkpoints["Siglip2Model"]))
    with pytest.raises(PipelineError, match="folder .*/nowhere does not exist"):
        spec(arch="CLIPModel", pretrained=str(tmp_path / "nowhere")).fingerprint
    with pytest.raises(PipelineError, match="needs model.pretrained"):
        spec(arch="CLIPModel", pretrained=None)
    with pytest.raises(PipelineError, match="for model.library=transformers only"):
        ModelSpec.from_cfg(OmegaConf.create({"name": "t", "arch": "tiny-clip", "pretrained": None, "context_length": 9}))
    with pytest.raises(PipelineError, match="model.library='openclip' is not one of open_clip, transformers"):
        ModelSpec.from_cfg(OmegaConf.create({"name": "t", "arch": "tiny-clip", "library": "openclip"}))


def test_captioning_is_refused_in_one_line_before_any_run(tmp_path, checkpoints, captions_root):
    cfg = job(tmp_path, checkpoints["CLIPModel"], "CLIPModel", "dataset=mscoco_captions", f"data_root={captions_root}")
    with pytest.raises(PipelineError, match="^task captioning needs a model with a caption decoder, and CLIPModel has "
                                            "none; use a CoCa") as refused:
        run_job(cfg)
    assert "\n" not in str(refused.value) and not (tmp_path / "mlflow.db").exists()


# -- a CLIPModel converted from the bundled open_clip model scores as that model, task by task ------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_checkpoint) -> Path:
    return tiny_hf.converted_tiny_clip(tmp_path_factory.mktemp("converted") / "tiny-clip-hf", tiny_checkpoint)


def both_libraries(tmp_path: Path, tiny_checkpoint: Path, converted: Path, *overrides: str):
    """The same job on the open_clip model and on its conversion, in one store: (open_clip's, transformers')."""
    common = [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_location={tmp_path}/artifacts",
              "num_workers=0", "device=cpu", *overrides]
    ours = run_job(compose_config(f"model.pretrained={tiny_checkpoint}", *common))
    theirs = run_job(compose_config("model=transformers/clip-vit-base-patch32", f"model.pretrained={converted}",
                                    "model.name=tiny_converted", *common))
    return ours, theirs


@pytest.mark.slow
def test_the_converted_model_gives_the_open_clip_models_zero_shot_result(tmp_path, tiny_checkpoint, converted,
                                                                         shapes_root):
    ours, theirs = both_libraries(tmp_path, tiny_checkpoint, converted, f"dataset.root={shapes_root}")
    assert theirs.value == ours.value > 0.5 and theirs.metrics["n"] == ours.metrics["n"]
    assert {name: theirs.metrics[name] for name in ("acc1", "acc5", "mean_per_class_recall")} == \
        {name: ours.metrics[name] for name in ("acc1", "acc5", "mean_per_class_recall")}
    image_runs = {tags["model"]: arrays for tags, arrays in stage_arrays(tmp_path, stage="embed", modality="image")}
    assert set(image_runs) == {"tiny-clip", "CLIPModel"}  # two models, two keys: nothing served across libraries
    for name in ("image_features", projection.PRE_PROJECTION):
        assert np.abs(image_runs["tiny-clip"][name] - image_runs["CLIPModel"][name]).max() < 1e-4
    store = tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "clip-tables")
    tags = store.client.get_run(theirs.job_run_id).data.tags
    assert (tags["model"], tags["pretrained"], tags["library"]) == ("CLIPModel", "tiny-clip-hf", "transformers")
    assert tags["lib.transformers"] == __import__("transformers").__version__
    assert "library" not in store.client.get_run(ours.job_run_id).data.tags


@pytest.mark.slow
@pytest.mark.parametrize("task", ["linear_probe", "retrieval", "winogavil", "winoground", "voc2007", "multilingual"])
def test_every_task_type_runs_on_the_converted_model_as_on_open_clip(task, tmp_path, tiny_checkpoint, converted,
                                                                     shapes_root, compositional_root):
    mirror = tmp_path / "mirror"
    if task == "retrieval":
        synthetic.write_hf_retrieval(mirror / "flickr_1k_test_image_text_retrieval")  # nlphuji's layout
    overrides = {
        "linear_probe": ["head=linear_probe", f"dataset.root={shapes_root}"],
        "retrieval": ["dataset=retrieval/flickr_1k_test_image_text_retrieval", f"data_root={mirror}"],
        "winogavil": ["dataset=misc/winogavil", f"data_root={mirror}"],
        "winoground": ["dataset=winoground", f"data_root={compositional_root}"],
        "voc2007": ["dataset=voc2007_multilabel", f"data_root={mirror}"],
        "multilingual": ["dataset=multilingual/xtd10", f"data_root={mirror}", "language=de"],
    }[task]
    cfg = compose_config(*overrides)
    if task == "winogavil":
        synthetic.write_hf_winogavil(Path(cfg.dataset.root))
    elif task == "voc2007":
        synthetic.write_voc_devkit(mirror / "VOCdevkit", images=24)
    elif task == "multilingual":
        layout = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / "multilingual" / "xtd10.yaml").lines)
        synthetic.write_lines_retrieval(mirror / "xtd10", layout, list(layout["languages"]))
    ours, theirs = both_libraries(tmp_path, tiny_checkpoint, converted, *overrides)
    assert theirs.metric == ours.metric and theirs.metrics["n"] == ours.metrics["n"]
    # L-BFGS turns the towers' last-bit differences into a sample or two of the probe's 480; the rest is argmax
    tolerance = 2 / theirs.metrics["n"] if task == "linear_probe" else 1e-6
    assert theirs.value == pytest.approx(ours.value, abs=tolerance), (ours.metrics, theirs.metrics)


def test_a_checkpoint_lacking_weights_of_its_class_is_refused_not_filled_at_random(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(checkpoints["CLIPModel"], folder)
    weights = load_file(folder / "model.safetensors")
    del weights["text_projection.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PipelineError, match="^the transformers checkpoint .*/partial lacks 1 of CLIPModel's weights "
                                            r"\(text_projection.weight\): it is not a CLIPModel checkpoint"):
        loader_for(folder, "CLIPModel").get()
    weights["text_projection.weight"] = torch.zeros(3, 3)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PipelineError, match="did not load as CLIPModel"):
        loader_for(folder, "CLIPModel").get()
