"""Other languages: ImageNet-1k's class names and templates in clip_benchmark's four other languages, Babel-ImageNet
per language on ImageNet's one image stage, and one-line refusals of what a dataset has no names for."""
import json
import os

import pytest

from pipeline.data import languages
from pipeline.errors import PipelineError
from pipeline.jobs.scoring import run_job
from tests import synthetic
from tests.conftest import compose_config


def clip_benchmark_file(name: str) -> dict:
    """A data file where clip_benchmark's builder opens it (`os.path.dirname(builder.__file__)`)."""
    from clip_benchmark.datasets import builder

    with open(os.path.join(os.path.dirname(builder.__file__), name)) as handle:
        return json.load(handle)


@pytest.mark.parametrize("language", ["ar", "cn", "it", "jp"])
def test_imagenet_in_each_language_is_clip_benchmarks(language):
    english = clip_benchmark_file("en_classnames.json")["imagenet1k"]
    names, templates = languages.localized("imagenet1k", language, english, ["a photo of a {c}."])
    assert names == clip_benchmark_file(f"{language}_classnames.json")["imagenet1k"]
    assert templates == clip_benchmark_file(f"{language}_zeroshot_classification_templates.json")["imagenet1k"]
    assert names != english


def test_babel_imagenet_is_clip_benchmarks_subset_names_and_nllb_templates():
    indices, names, templates = languages.babel("it")
    expected_indices, expected_names = clip_benchmark_file("babel_imagenet.json")["IT"]
    assert indices == expected_indices and names == expected_names
    assert templates == [t.replace("{}", "{c}") for t in clip_benchmark_file("nllb_dist13b_prompts.json")["IT"]]
    assert len(languages.babel_languages()) == 90 and "br" not in languages.babel_languages()


def test_what_a_dataset_has_no_names_for_is_refused_in_one_line():
    assert languages.languages_of("imagenet1k") == ["ar", "cn", "en", "it", "jp"]
    with pytest.raises(PipelineError, match=r"dataset imagenet1k has no class names in language 'de'; it has them in "
                                            r"ar, cn, en, it, jp"):
        languages.check("imagenet1k", "zeroshot_classification", "de", "dataset")
    with pytest.raises(PipelineError, match="dataset cars has no class names in language 'it'; it has them in en"):
        languages.check("cars", "zeroshot_classification", "it", "dataset")
    with pytest.raises(PipelineError, match="prompts with source open_clip are English templates; with language=it"):
        languages.check("imagenet1k", "zeroshot_classification", "it", "open_clip")
    with pytest.raises(PipelineError, match="language=it applies to zero-shot classification"):
        languages.check("retrieval/flickr_1k_test_image_text_retrieval", "zeroshot_retrieval", "it", "dataset")
    with pytest.raises(PipelineError, match="Babel-ImageNet has no NLLB templates for language 'br'"):
        languages.babel("br")


def job(tmp_path, tiny_checkpoint, *overrides):
    return run_job(compose_config(f"model.pretrained={tiny_checkpoint}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                                  f"tracking.artifact_location={tmp_path}/artifacts", "num_workers=0",
                                  f"data_root={tmp_path / 'mirror'}", *overrides))


def test_imagenet_in_italian_and_babel_imagenet_share_imagenets_image_stage(tmp_path, tiny_checkpoint):
    from pipeline.jobs.scoring import resolve
    from pipeline.jobs.spec import JobSpec

    babel_it = languages.babel("it")[0]
    outside = next(i for i in range(1000) if i not in babel_it)  # a class Babel-ImageNet has no Italian name for
    root = tmp_path / "mirror" / "wds_imagenet1k_test"
    synthetic.write_imagenet_stand_in(root, classes=[*babel_it[:11], outside])
    italian_cfg = compose_config("dataset=imagenet1k", "language=it", f"data_root={tmp_path / 'mirror'}")
    resolved = resolve(JobSpec.from_cfg(italian_cfg))  # prompts=dataset: the language's own templates
    assert resolved.class_prompts == clip_benchmark_file("it_zeroshot_classification_templates.json")["imagenet1k"]
    assert resolved.info.classnames[1] == clip_benchmark_file("it_classnames.json")["imagenet1k"][1]
    one = ["prompts=a_photo_of"]  # one template (a list): 1,000 classes encode in seconds
    english = job(tmp_path, tiny_checkpoint, "dataset=imagenet1k", *one)
    italian = job(tmp_path, tiny_checkpoint, "dataset=imagenet1k", "language=it", *one)
    babel = job(tmp_path, tiny_checkpoint, "dataset=babel_imagenet", "language=it", *one)
    assert english.metrics["n"] == italian.metrics["n"] == 24 and babel.metrics["n"] == 22  # the outsider's 2 left
    assert babel.metrics["num_classes"] == len(babel_it)
    from pipeline.store import tracking

    store = tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "clip-tables", str(tmp_path / "artifacts"))
    tags = [store.client.get_run(r.job_run_id).data.tags for r in (english, italian, babel)]
    assert [t["language"] for t in tags] == ["en", "it", "it"]
    assert tags[0]["run.embed_image"] == tags[1]["run.embed_image"] == tags[2]["run.embed_image"]  # encoded once
    assert tags[0]["run.text"] != tags[1]["run.text"]  # Italian names and templates: another classifier
    with pytest.raises(PipelineError, match="dataset imagenet1k has no class names in language 'de'"):
        job(tmp_path, tiny_checkpoint, "dataset=imagenet1k", "language=de")
    assert root.is_dir()
