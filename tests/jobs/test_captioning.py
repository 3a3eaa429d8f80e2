"""The captioning task: a CoCa's captions of the MSCOCO stand-in, scored as clip_benchmark 1.6.2's `--task
captioning` scores them (its `captioning.evaluate` runs on the same checkpoint and images), generated once whatever
is scored, with intervals for the corpus metrics pycocoevalcap's Python computes and none for METEOR and SPICE."""
from __future__ import annotations

from pathlib import Path

import open_clip
import pandas as pd
import pytest
import torch
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.metrics import captioning as cb

from pipeline.data import datasets
from pipeline.errors import PipelineError
from pipeline.jobs.scoring import run_job
from pipeline.models import beam_search
from pipeline.models.loading import register_project_architectures
from pipeline.offline import tiny_coca
from pipeline.stages import generate
from pipeline.stages.score import caption_metrics, uncertainty
from tests.conftest import compose_config, run_pipeline
from tests.jobs.test_scoring import all_runs, job_config
from tests.stages.test_caption_metrics import NoSpice

INTERVALS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")


def captioning_config(tmp_path: Path, captions_root: Path, checkpoint: Path, *overrides: str):
    return job_config(tmp_path, checkpoint, "dataset=mscoco_captions", "model=tiny_coca", f"data_root={captions_root}",
                      "batch_size=8", *overrides)


@pytest.fixture(scope="module")
def worded_coca(tmp_path_factory) -> Path:
    """The tiny CoCa with its caption decoder leaning towards the stand-in's words, and towards ending once it may
    (its end token's column along the decoder's mean output), so its short captions share words with the
    references and the metrics are away from zero: a checkpoint in open_clip's layout."""
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    words = tokenizer(["a photo of red circle square green blue on white background ."])[0]
    favoured = words[(words != 0) & (words < 49406)]
    model = tiny_coca.build(seed=1)
    decoder = model.text_decoder
    outputs = []
    hook = decoder.ln_final.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.full((8, 6), 320))
        hook.remove()
        decoder.text_projection[:, favoured] += torch.randn(decoder.width, len(favoured)) * 3.0
        decoder.text_projection[:, 49407] = outputs[0][:, 1:].mean(dim=(0, 1)) * 10.0
    path = tmp_path_factory.mktemp("coca") / "worded-coca.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def test_generated_tokens_are_cut_as_clip_benchmark_cuts_them():
    from open_clip.tokenizer import _tokenizer  # what clip_benchmark decodes with (metrics/captioning.py)

    tokenizer = open_clip.get_tokenizer("tiny-coca")
    rows = [tokenizer(["a red circle"])[0], torch.tensor([49406, 320, 736, 49407, 1929, 0, 0]),
            torch.tensor([49406, 320, 736, 1929, 2368, 536, 269])]  # ends after its end token; never ends
    for row in rows:
        theirs = _tokenizer.decode(row.numpy()).split("<end_of_text>")[0].replace("<start_of_text>", "").strip()
        assert generate.decoded(tokenizer, row.numpy()) == theirs
    assert generate.decoded(tokenizer, rows[0].numpy()) == "a red circle"


def test_generation_settings_are_numbers_of_their_kind_checked_before_any_run():
    defaults = {"generation_type": "beam_search", "seq_len": 30, "max_seq_len": 77, "min_seq_len": 5, "num_beams": 6,
                "num_beam_groups": 3, "repetition_penalty": 1, "temperature": 1.0, "top_p": 0.1, "top_k": 1, "seed": 0}
    found = generate.settings(defaults, 76)
    assert found == {"generation_type": "beam_search", "num_beams": 6, "num_beam_groups": 3, "seq_len": 30,
                     "min_seq_len": 5, "repetition_penalty": 1.0}  # what beam search reads, and nothing else
    assert type(found["repetition_penalty"]) is float and type(found["num_beams"]) is int
    assert generate.settings({**defaults, "num_beams": 6.0}, 76) == found
    assert generate.settings({**defaults, "generation_type": "top_p"}, 76)["seed"] == 0
    assert generate.describe(generate.settings({**defaults, "num_beams": 4, "num_beam_groups": 2}, 76), found) == \
        "generate beam_search num_beams=4,num_beam_groups=2"
    for change, said in [({"num_beams": 4}, "num_beam_groups=3 must be a divisor of generation.num_beams"),
                         ({"num_beams": 1, "num_beam_groups": 1}, "num_beams=1 must be 2 or more"),
                         ({"seq_len": 5}, "seq_len=5 must be more than generation.min_seq_len"),
                         ({"seq_len": 80}, "seq_len=80 is longer than the model's text context .76 tokens."),
                         ({"num_beams": 6.5}, "num_beams=6.5 must be a whole number"),
                         ({"repetition_penalty": "strong"}, "repetition_penalty='strong' is not a number"),
                         ({"repetition_penalty": 0}, "repetition_penalty=0.0 must be above 0"),
                         ({"generation_type": "top_p", "top_p": 1.5}, r"top_p=1.5 must be in \(0, 1\]"),
                         ({"generation_type": "top_k", "top_k": None}, "top_k=None is not a number"),
                         ({"generation_type": "greedy"}, "generation_type='greedy' is not one of")]:
        with pytest.raises(PipelineError, match=said):
            generate.settings({**defaults, **change}, 76)


@pytest.fixture(scope="module")
def first_job(tmp_path_factory, captions_root, worded_coca):
    """One captioning job of the worded CoCa in a store of its own (only the interval test adds runs to it)."""
    folder = tmp_path_factory.mktemp("captioning")
    return folder, run_job(captioning_config(folder, captions_root, worded_coca))


def test_scores_equal_clip_benchmark_captioning_evaluate(first_job, captions_root, worded_coca, monkeypatch):
    _, result = first_job

    register_project_architectures()
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-coca", pretrained=str(worded_coca))
    spec = datasets.DatasetSpec.from_cfg(compose_config("dataset=mscoco_captions", f"data_root={captions_root}").dataset)
    beam_search.install()
    loader = torch.utils.data.DataLoader(datasets.build(spec, preprocess), batch_size=8,
                                         collate_fn=image_captions_collate_fn)
    monkeypatch.setattr(cb, "Spice", NoSpice)
    reference = cb.evaluate(model.eval(), loader, 8, "cpu", preprocess, amp=True)

    for name in caption_metrics.CAPTION_METRICS:
        assert result.metrics[name] == reference[name], name
    assert result.metric == "CIDEr" and result.metrics["CIDEr"] > 0.05 and result.metrics["Bleu_1"] > 0.1
    assert result.metrics["num_images"] == 24 and result.metrics["num_references"] == 120


def test_intervals_cover_the_corpus_metrics_and_rescoring_never_regenerates(first_job, captions_root, worded_coca):
    tmp_path, result = first_job
    first = result.metrics
    for name in INTERVALS:
        assert first[uncertainty.CI_LOW + name] <= first[name] <= first[uncertainty.CI_HIGH + name], name
    assert first[uncertainty.CI_LOW + "CIDEr"] < first["CIDEr"] < first[uncertainty.CI_HIGH + "CIDEr"]
    for name in ("METEOR", "SPICE"):
        assert uncertainty.CI_LOW + name not in first
    assert "SPICE" not in first and first["METEOR"] > 0
    store, _ = all_runs(tmp_path)
    table = pd.read_csv(store.client.download_artifacts(result.score_run_id, "captions.csv", str(tmp_path)))
    assert list(table.columns) == ["image", "caption", "references", *caption_metrics.CAPTION_METRICS]
    assert len(table) == 24 and table["CIDEr"].mean() == pytest.approx(first["CIDEr"], abs=1e-4)
    assert table["references"].str.count(" [|] ").eq(4).all()  # five references each

    again = run_job(captioning_config(tmp_path, captions_root, worded_coca, "dataset.main_metric=METEOR"))
    assert again.metric == "METEOR" and again.value == first["METEOR"]
    _, runs = all_runs(tmp_path)
    stages = sorted(run.data.tags["stage"] for run in runs)
    assert stages == ["generate", "job", "job", "score", "score"]  # one generation, scored twice

    other = run_job(captioning_config(tmp_path, captions_root, worded_coca, "generation.num_beams=4",
                                      "generation.num_beam_groups=2"))
    _, runs = all_runs(tmp_path)
    assert sorted(run.data.tags["stage"] for run in runs).count("generate") == 2  # settings are in the key
    assert other.metrics["num_images"] == 24


def test_a_model_without_a_caption_decoder_is_refused_before_any_run(tmp_path, captions_root, tiny_checkpoint):
    cfg = captioning_config(tmp_path, captions_root, tiny_checkpoint, "model=tiny")
    with pytest.raises(PipelineError, match="task captioning needs a model with a caption decoder, and tiny-clip has"):
        run_job(cfg)
    assert not (tmp_path / "mlflow.db").exists()


def test_spice_as_main_metric_needs_spice_and_spice_on_java_17_is_one_line(tmp_path, captions_root,
                                                                          tiny_coca_checkpoint):
    with pytest.raises(PipelineError, match="dataset.main_metric=SPICE needs spice=true"):
        run_job(captioning_config(tmp_path, captions_root, tiny_coca_checkpoint, "dataset.main_metric=SPICE"))
    with pytest.raises(PipelineError, match="generation.num_beams=4 must be 2 or more|num_beam_groups=3 must be"):
        run_job(captioning_config(tmp_path, captions_root, tiny_coca_checkpoint, "generation.num_beams=4"))
    assert not (tmp_path / "mlflow.db").exists()
    if caption_metrics.java_version() in caption_metrics.SPICE_JAVA:
        return  # this machine's Java runs SPICE (CI's and ours are 17: the refusal is what runs there)
    with pytest.raises(PipelineError, match="spice=true: SPICE 1.0 fails on Java"):
        run_job(captioning_config(tmp_path, captions_root, tiny_coca_checkpoint, "spice=true"))


@pytest.mark.slow
def test_mscoco_captions_with_the_tiny_coca_runs_from_the_command_line(tmp_path, captions_root, tiny_coca_checkpoint):
    """What the docs show, as a user types it: exit 0, one progress bar, the result line, no pycocoevalcap noise."""
    done = run_pipeline(tmp_path, "dataset=mscoco_captions", "model=tiny_coca", f"data_root={captions_root}",
                        f"model.pretrained={tiny_coca_checkpoint}", "num_workers=0")
    assert done.returncode == 0, done.stderr[-2000:]
    said = done.stdout + done.stderr
    assert "on mscoco_captions with prompts=*" in said and "CIDEr = " in said
    assert "generate mscoco_captions/test" in said
    assert "PTBTokenizer" not in said and "testlen" not in said
