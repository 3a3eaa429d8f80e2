"""Captioning metrics: equal to clip_benchmark 1.6.2's COCOEvalCap on the same captions (both run here, Java
included), and the bootstrap's Python BLEU, CIDEr and ROUGE-L equal to pycocoevalcap's on the sample and on
resampled corpora written out image by image."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
from clip_benchmark.metrics import captioning as cb
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from pipeline.errors import PipelineError
from pipeline.stages.score import caption_bootstrap, caption_metrics

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "cross")
FRAMES = ("A photo of a {c} {s}.", "a {c} {s} on a white background", "There is a {s}, and it is {c}!",
          "a small {c} {s}", "A drawing of one {c} {s}, centred.", "the {s} is {c}")


def caption_set(images: int = 30, seed: int = 0) -> tuple[list[list[str]], list[str]]:
    """References (3 to 5 per image, with capitals and punctuation for the PTB tokenizer) and generated captions
    that sometimes name the wrong colour or shape, repeat words, or say nothing alike."""
    rng = random.Random(seed)
    references, generated = [], []
    for _ in range(images):
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        references.append([rng.choice(FRAMES).format(c=colour, s=shape) for _ in range(rng.randint(3, 5))])
        said_colour = colour if rng.random() < 0.7 else rng.choice(COLOURS)
        said_shape = shape if rng.random() < 0.7 else rng.choice(SHAPES)
        generated.append(rng.choice([*FRAMES, "{s} {s} {s}", "nothing to see here"]).format(c=said_colour, s=said_shape))
    return references, generated


class NoSpice:
    """SPICE cannot run here (it downloads Stanford CoreNLP from nlp.stanford.edu, and SPICE 1.0 fails on this
    machine's Java 17), so clip_benchmark's COCOEvalCap gets this in its place; the other scorers are its own."""

    def compute_score(self, gts, res):
        return float("nan"), [float("nan")] * len(gts)

    def method(self):
        return "SPICE"


def test_scores_equal_clip_benchmark_coco_eval_cap(monkeypatch):
    references, generated = caption_set()
    results = [{"image_id": i, "gen": [{"caption": g}], "true": [{"caption": t} for t in refs]}
               for i, (g, refs) in enumerate(zip(generated, references))]
    monkeypatch.setattr(cb, "Spice", NoSpice)
    reference = cb.COCOEvalCap(results)
    reference.evaluate()

    truth, made = caption_metrics.tokenize(references, generated)
    ours = caption_metrics.evaluate(truth, made)
    assert set(ours.values) == set(caption_metrics.CAPTION_METRICS)
    for name in caption_metrics.CAPTION_METRICS:
        assert ours.values[name] == reference.eval[name], name
        assert [row[name] for row in reference.evalImgs] == pytest.approx(ours.per_image[name], abs=0), name
    assert 0 < ours.values["CIDEr"] and 0 < ours.values["Bleu_4"] < ours.values["Bleu_1"] < 1


def resampled(truth: dict, made: dict, draw: np.ndarray) -> tuple[dict, dict]:
    """The corpus that holds image `draw[k]` at position k, written out for pycocoevalcap."""
    keys = list(truth)
    return ({k: truth[keys[i]] for k, i in enumerate(draw)}, {k: made[keys[i]] for k, i in enumerate(draw)})


def pycocoevalcap_scores(truth: dict, made: dict) -> dict[str, float]:
    bleu, _ = Bleu(4).compute_score(truth, made, verbose=0)
    rouge, _ = Rouge().compute_score(truth, made)
    cider, _ = Cider().compute_score(truth, made)
    return {**{f"Bleu_{k + 1}": b for k, b in enumerate(bleu)}, "ROUGE_L": rouge, "CIDEr": cider}


def test_python_bleu_cider_rouge_equal_pycocoevalcap_on_resampled_corpora():
    references, generated = caption_set(40, seed=1)
    truth, made = caption_metrics.tokenize(references, generated)
    _, rouge = Rouge().compute_score(truth, made)
    bleu = caption_bootstrap.bleu_statistics(truth, made)
    terms = caption_bootstrap.cider_terms(truth, made)
    rng = np.random.default_rng(0)
    draws = [np.arange(len(truth)), *(rng.integers(0, len(truth), len(truth)) for _ in range(4))]
    for draw in draws:
        counts = caption_bootstrap.multiplicities(draw[None, :], len(truth))
        ours = {**{f"Bleu_{k + 1}": b for k, b in enumerate(caption_bootstrap.corpus_bleu(counts @ bleu)[0])},
                "ROUGE_L": float(counts @ rouge / len(truth)), "CIDEr": float(caption_bootstrap.cider(terms, counts)[0])}
        theirs = pycocoevalcap_scores(*resampled(truth, made, draw))
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12)


def test_replicates_are_drawn_per_image_and_bracket_the_score():
    references, generated = caption_set(40, seed=2)
    truth, made = caption_metrics.tokenize(references, generated)
    scores = caption_metrics.evaluate(truth, made)
    replicates = caption_bootstrap.caption_replicates(truth, made, scores.per_image["ROUGE_L"], seed=[0, 7],
                                                      resamples=200)
    assert set(replicates) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    for name, values in replicates.items():
        assert values.shape == (200,) and np.isfinite(values).all()
        low, high = np.percentile(values, [2.5, 97.5])
        assert low < scores.values[name] < high, name
        assert values.std() > 0
    again = caption_bootstrap.caption_replicates(truth, made, scores.per_image["ROUGE_L"], seed=[0, 7], resamples=200)
    assert all(np.array_equal(replicates[name], again[name]) for name in replicates)


def test_missing_java_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PipelineError, match="no `java` is on PATH; install a Java runtime"):
        caption_metrics.check_java(spice=False)


def fake_java(folder, version: str, fails: str = "") -> None:
    """A `java` that says its version, as `java -version` does (on stderr), and with `fails` says that and exits 1
    when asked to run a jar, as a JVM that cannot start does."""
    script = folder / "java"
    failing = f'[ "$1" = -version ] || {{ echo "{fails}" >&2; exit 1; }}\n' if fails else ""
    script.write_text(f"#!/bin/sh\n{failing}echo 'openjdk version \"{version}\" 2025-04-15' >&2\n")
    script.chmod(0o755)


@pytest.mark.parametrize("version, major", [("17.0.15", 17), ("1.8.0_392", 8), ("11.0.2", 11), ("21", 21)])
def test_java_version_reads_old_and_new_numbering(monkeypatch, tmp_path, version, major):
    fake_java(tmp_path, version)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert caption_metrics.java_version() == major
    if major >= 17:
        with pytest.raises(PipelineError, match=f"SPICE 1.0 fails on Java {major}"):
            caption_metrics.check_java(spice=True)
    else:
        caption_metrics.check_java(spice=True)
    caption_metrics.check_java(spice=False)


def test_quiet_keeps_pycocoevalcap_off_the_terminal_and_logs_what_java_said_when_it_fails(capfd, caplog):
    import logging
    import subprocess

    caplog.set_level(logging.DEBUG, logger="pipeline.stages.score.caption_metrics")
    with caption_metrics.quiet():
        subprocess.run(["sh", "-c", "echo tokenized 23 tokens >&2"], check=True)
        print("{'testlen': 10}")
    said = capfd.readouterr()
    assert "tokenized" not in said.err and "testlen" not in said.out
    assert [r.levelno for r in caplog.records if "tokenized 23 tokens" in r.getMessage()] == [logging.DEBUG]
    with pytest.raises(subprocess.CalledProcessError), caption_metrics.quiet():
        subprocess.run(["sh", "-c", "echo InaccessibleObjectException >&2; exit 1"], check=True)
    assert [r.levelno for r in caplog.records if "InaccessibleObjectException" in r.getMessage()] == [logging.WARNING]


def test_a_java_that_fails_to_start_is_one_line_with_its_reason_and_never_hangs(monkeypatch, tmp_path):
    """The tokenizer never checks Java's exit status, and METEOR's failed call keeps the lock its Meteor object
    waits on when collected: both end in one line naming what the JVM said."""
    import gc

    references, generated = caption_set(6)
    truth, made = caption_metrics.tokenize(references, generated)  # with the real Java
    fake_java(tmp_path, "17.0.15", fails="Could not reserve enough space for 2097152KB object heap")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(PipelineError, match="PTB tokenizer .Java. did not tokenize the captions .Could not reserve"):
        caption_metrics.tokenize(references, generated)
    with pytest.raises(PipelineError, match="METEOR could not run .Could not reserve enough space"):
        caption_metrics.evaluate(truth, made)
    gc.collect()  # the Meteor object's __del__ runs here, and returns
