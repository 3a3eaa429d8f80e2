"""The COCO caption evaluation of generated captions, as clip_benchmark 1.6.2's `metrics/captioning.py` runs it:
pycocoevalcap's PTB tokenizer on the references and the captions, then BLEU-1..4, METEOR, ROUGE-L and CIDEr (and
SPICE where asked for), each image scored against all its references. The tokenizer, METEOR and SPICE run on Java."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np

from pipeline.errors import PipelineError, one_line

log = logging.getLogger(__name__)

BLEU = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
CAPTION_METRICS = (*BLEU, "METEOR", "ROUGE_L", "CIDEr")  # clip_benchmark's names, in its order
SPICE = "SPICE"
JAVA_HINT = ("install a Java runtime (Debian/Ubuntu: apt-get install default-jre-headless; `make install` does it "
             "when run as root)")
# SPICE 1.0 reflects into JDK internals that Java 17 closes (InaccessibleObjectException).
SPICE_JAVA = range(8, 17)


def java_version() -> int | None:
    """The major version of the `java` on PATH; None when there is none."""
    if shutil.which("java") is None:
        return None
    said = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', said)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def check_java(spice: bool) -> None:
    """Fail before anything runs when the metrics cannot: no Java at all, or SPICE asked of a Java it fails on."""
    version = java_version()
    if version is None:
        raise PipelineError(f"the captioning metrics run pycocoevalcap's PTB tokenizer and METEOR on Java, and no "
                            f"`java` is on PATH; {JAVA_HINT}")
    if spice and version not in SPICE_JAVA:
        raise PipelineError(f"spice=true: SPICE 1.0 fails on Java {version} (it needs Java 8 to 16: 17 and later "
                            f"raise InaccessibleObjectException); put such a Java first on PATH, or leave spice=false")


@contextlib.contextmanager
def quiet(said: list[str] | None = None) -> Iterator[None]:
    """pycocoevalcap prints (BLEU's counts) and lets Java write to the terminal (the tokenizer's rate); both go to
    the log instead (at warning level when the block fails: then it is the reason), and into `said`, so a job shows
    its progress bar and its result line only."""
    failed = False
    with tempfile.TemporaryFile(mode="w+", errors="replace") as sink:
        sys.stdout.flush(), sys.stderr.flush()  # what was written before goes where it was going
        saved = [os.dup(1), os.dup(2)]
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(sink):
                yield
        except BaseException:
            failed = True
            raise
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            lines = sink.read().splitlines()
            if said is not None:
                said.extend(lines)
            for line in lines:
                log.log(logging.WARNING if failed else logging.DEBUG, "pycocoevalcap: %s", line)


Captions = Mapping[int, Sequence[str]]


def tokenize(references: Sequence[Sequence[str]], generated: Sequence[str]) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Both sides through the PTB tokenizer, keyed by image number as clip_benchmark keys them. The tokenizer never
    checks Java's exit status (a failed Java leaves one empty caption), so the counts are checked here."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer, said = PTBTokenizer(), []
    with quiet(said):
        truth = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(references)})
        made = tokenizer.tokenize({i: [{"caption": c}] for i, c in enumerate(generated)})
    expected = [len(refs) for refs in references], [1] * len(generated)
    if [[len(truth.get(i, ())) for i in range(len(references))], [len(made.get(i, ())) for i in range(len(generated))]] \
            != list(expected):
        reason = said[-1] if said else "no output"
        raise PipelineError(f"pycocoevalcap's PTB tokenizer (Java) did not tokenize the captions ({reason}); "
                            f"{JAVA_HINT}")
    return truth, made


@dataclass(frozen=True)
class CaptionScores:
    values: dict[str, float]            # the corpus scores
    per_image: dict[str, np.ndarray]    # each metric's score of every image, as pycocoevalcap gives it


def evaluate(truth: Captions, made: Captions, spice: bool = False) -> CaptionScores:
    """pycocoevalcap's scorers over tokenized captions, in clip_benchmark's order; SPICE only with `spice`."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    values: dict[str, float] = {}
    per_image: dict[str, np.ndarray] = {}
    scorers = [(Bleu(4), BLEU), (Meteor(), "METEOR"), (Rouge(), "ROUGE_L"), (Cider(), "CIDEr")]
    if spice:
        scorers.append((spice_scorer(), SPICE))
    for scorer, names in scorers:
        score, scores = scored(scorer, truth, made)
        if names == SPICE:
            scores = [image["All"]["f"] for image in scores]
        for name, value, each in (zip(names, score, scores) if isinstance(names, tuple) else [(names, score, scores)]):
            values[name] = float(value)
            per_image[name] = np.asarray(each, dtype=np.float64)
    return CaptionScores(values, per_image)


def scored(scorer, truth: Captions, made: Captions):
    """One scorer's (corpus score, per-image scores); a Java failure ends in one line that says what Java said."""
    said: list[str] = []
    try:
        with quiet(said):
            return scorer.compute_score(truth, made)
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        reason = stopped(scorer) or (said[-1] if said else one_line(exc))
        extra = "; or leave spice=false" if scorer.method() == SPICE else ""
        raise PipelineError(f"{scorer.method()} could not run ({reason}); {JAVA_HINT}{extra}") from exc


def stopped(scorer) -> str:
    """A scorer's Java process that failed mid-score (METEOR's): killed, its lock freed (pycocoevalcap's Meteor
    takes it when collected, and would wait forever for a lock its failed call still holds), and the last line it
    wrote to its stderr."""
    process, lock = getattr(scorer, "meteor_p", None), getattr(scorer, "lock", None)
    if process is None:
        return ""
    process.kill()
    process.wait()
    with contextlib.suppress(OSError):
        process.stdin.close()
    if lock is not None and lock.locked():
        lock.release()
    lines = process.stderr.read().decode(errors="replace").strip().splitlines() if process.stderr else []
    return lines[-1] if lines else ""


def spice_scorer():
    """pycocoevalcap's SPICE, which downloads Stanford CoreNLP 3.6.0 into its own folder on first use."""
    from pycocoevalcap.spice.spice import Spice

    try:
        with quiet():
            return Spice()
    except (OSError, zipfile.BadZipFile) as exc:
        raise PipelineError(f"SPICE needs Stanford CoreNLP 3.6.0, fetched from nlp.stanford.edu on first use, and "
                            f"the download failed ({one_line(exc)}); fetch it on a machine with internet access, or "
                            f"leave spice=false") from exc
