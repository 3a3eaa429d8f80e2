import open_clip
import pytest
from omegaconf import OmegaConf

from pipeline.data import prompts
from pipeline.errors import PipelineError


def cfg(**values):
    return prompts.PromptSet.from_cfg(OmegaConf.create({"name": "test", **values}))


def test_dataset_prompts_use_the_dataset_templates():
    assert prompts.resolve(cfg(source="dataset"), "d", ["a {c}.", "the {c}."], []) == ["a {c}.", "the {c}."]


def test_dataset_prompts_without_templates_is_an_error():
    with pytest.raises(PipelineError, match="zeroshot_classification_templates"):
        prompts.resolve(cfg(source="dataset"), "d", [], [])


def test_open_clip_sets_recover_the_template_text():
    openai = prompts.resolve(cfg(source="open_clip", attribute="OPENAI_IMAGENET_TEMPLATES"), "d", [], [])
    assert len(openai) == 80 and "a bad photo of a {c}." in openai
    assert [t.format(c="dog") for t in openai] == [t("dog") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    assert len(prompts.resolve(cfg(source="open_clip", attribute="SIMPLE_IMAGENET_TEMPLATES"), "d", [], [])) == 7


def test_file_prompts_one_per_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a sketch of a {c}.\n\n  itap of a {c}.  \n")
    assert prompts.resolve(cfg(source="file", path=str(path)), "d", [], []) == ["a sketch of a {c}.", "itap of a {c}."]


def test_missing_prompt_file_names_the_path(tmp_path):
    with pytest.raises(PipelineError, match="nope.txt"):
        prompts.resolve(cfg(source="file", path=str(tmp_path / "nope.txt")), "d", [], [])


def test_template_without_placeholder_is_rejected():
    with pytest.raises(PipelineError, match=r"'a photo\.' has no \{c\}"):
        prompts.resolve(cfg(source="list", templates=["a photo of a {c}.", "a photo."]), "d", [], [])


def test_fillers_fill_by_name_like_clip_benchmark():
    fill = prompts.fillers(["a {c} in {c}-land."])[0]
    assert fill("dog") == "a dog in dog-land."


def test_clip_benchmark_templates_follow_its_lookup_order():
    import json
    from importlib import resources
    table = json.loads(resources.files("clip_benchmark.datasets").joinpath("en_zeroshot_classification_templates.json").read_text())
    source = cfg(source="clip_benchmark")
    assert prompts.resolve(source, "vtab/pets", [], []) == table["pets"]        # prefix stripped
    assert prompts.resolve(source, "cifar10", [], []) == table["cifar10"]
    assert prompts.resolve(source, "objectnet", [], []) == table["imagenet1k"]  # fallback


def test_clip_hints_per_dataset_with_default():
    hints = cfg(source="per_dataset", default=["a photo of a {c}."], by_dataset={"vtab/pets": ["a photo of a {c}, a type of pet."]})
    assert prompts.resolve(hints, "vtab/pets", [], []) == ["a photo of a {c}, a type of pet."]
    assert prompts.resolve(hints, "cars", [], []) == ["a photo of a {c}."]


def test_cupl_gives_per_class_sentences_for_imagenet():
    from open_clip import IMAGENET_CLASSNAMES
    cupl = prompts.resolve(cfg(source="clip_benchmark_cupl", dataset_key="imagenet1k"), "imagenet1k", [],
                           list(IMAGENET_CLASSNAMES[:3]))
    assert list(cupl) == list(IMAGENET_CLASSNAMES[:3]) and all(len(v) > 1 for v in cupl.values())
    with pytest.raises(PipelineError, match="lack 1 classes"):
        prompts.resolve(cfg(source="clip_benchmark_cupl", dataset_key="imagenet1k"), "x", [], ["red circle"])


# The swept datasets of suite=clip_paper whose templates in openai/CLIP's prompts.md are not clip_benchmark's
# (docs/reproduction.md lists them); every other one has the same templates in the same order.
PAPER_DIFFERS = {"vtab/resisc45", "vtab/pcam", "vtab/clevr_count_all"}


def test_clip_paper_prompts_cover_the_suite_and_differ_from_clip_benchmark_only_where_recorded():
    from pipeline.data import catalog

    paper = prompts.PromptSet.from_cfg({"name": "clip_paper", "source": "clip_paper"})
    benchmark = prompts.PromptSet.from_cfg({"name": "clip_benchmark", "source": "clip_benchmark"})
    differ = {key for key in catalog.suite("clip_paper")
              if prompts.resolve(paper, key, [], ["x"]) != prompts.resolve(benchmark, key, [], ["x"])}
    assert differ == PAPER_DIFFERS
    assert prompts.resolve(paper, "vtab/pcam", [], ["x"]) == ["this is a photo of {c}"]
    imagenet = [template("{c}") for template in open_clip.OPENAI_IMAGENET_TEMPLATES]
    assert prompts.resolve(paper, "imagenet1k", [], ["x"]) == imagenet  # the paper's 80, as open_clip ships them
    assert prompts.resolve(paper, "birdsnap", [], ["x"]) == ["a photo of a {c}, a type of bird."]
    with pytest.raises(PipelineError, match="the CLIP paper gives no prompts for dataset vtab/svhn"):
        prompts.resolve(paper, "vtab/svhn", [], ["x"])
