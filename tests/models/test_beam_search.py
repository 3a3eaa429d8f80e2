"""The group beam search CoCa captions with equals transformers 4.57's `BeamSearchScorer`, run here from its own
wheel: token for token through open_clip's real generation loop, and call for call on random candidates."""
from __future__ import annotations

import subprocess
import sys
import types
import zipfile

import open_clip.coca_model as coca_model
import pytest
import torch

from pipeline.models import beam_search
from pipeline.offline import tiny_coca
from tests.conftest import ASSETS

REFERENCE = "transformers==4.57.6"  # the last transformers with BeamSearchScorer that open_clip 3.3 imports
EOS, PAD = 49407, 0


@pytest.fixture(scope="module")
def reference_scorer() -> type:
    """transformers 4.57's `BeamSearchScorer`, its two modules loaded from the wheel (pip fetches it once into
    outputs/reference_wheels) as submodules of the installed transformers, whose `utils` they import."""
    folder = ASSETS / "reference_wheels"
    wheels = sorted(folder.glob("transformers-4.57.6-*.whl"))
    if not wheels:
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(folder),
                                  REFERENCE], capture_output=True, text=True)
        assert fetched.returncode == 0, f"the reference needs {REFERENCE} from PyPI once: {fetched.stderr[-500:]}"
        wheels = sorted(folder.glob("transformers-4.57.6-*.whl"))
    import transformers.generation  # noqa: F401  (the package the reference modules resolve `..utils` against)

    loaded = {}
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name in ("beam_constraints", "beam_search"):
            module = types.ModuleType(f"transformers.generation._reference_{name}")
            module.__package__ = "transformers.generation"
            sys.modules[f"transformers.generation.{name}"] = module  # beam_search imports `.beam_constraints`
            exec(compile(wheel.read(f"transformers/generation/{name}.py").decode(), f"{REFERENCE}:{name}.py", "exec"),
                 module.__dict__)
            loaded[name] = module
    return loaded["beam_search"].BeamSearchScorer


def favouring_coca(seed: int) -> torch.nn.Module:
    """The project's tiny CoCa with random weights, a few tokens (EOS among them) favoured so that captions end at
    different steps and finished hypotheses compete with open beams."""
    model = tiny_coca.build(seed)
    projection = model.text_decoder.text_projection
    favoured = torch.tensor([EOS, 320, 1929, 2368, 3086, 536, 269, 267])
    with torch.no_grad():
        projection[:, favoured] = torch.randn(projection.shape[0], len(favoured)) * 0.5
        projection[:, EOS] = projection[:, 320] + torch.randn(projection.shape[0]) * (0.05 + 0.05 * seed)
    return model


def test_generation_matches_transformers_scorer_token_for_token(reference_scorer, monkeypatch):
    beam_search.install(coca_model)
    ended = []  # captions that ended before the last step, so that path is compared too

    class Recorded(beam_search.GroupBeamScorer):
        def process(self, *args, **kwargs):
            before = sum(f.added for f in self._beam_hyps)
            out = super().process(*args, **kwargs)
            ended.append(sum(f.added for f in self._beam_hyps) - before)
            return out

    for seed in range(8):
        model = favouring_coca(seed)
        images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        length = (12, 30)[seed % 2]  # clip_benchmark's 30 tokens, and a shorter cap where more captions hit it
        monkeypatch.setattr(coca_model, "BeamSearchScorer", Recorded)
        ours = model.generate(images, seq_len=length)
        monkeypatch.setattr(coca_model, "BeamSearchScorer", reference_scorer)
        theirs = model.generate(images, seq_len=length)
        assert torch.equal(ours, theirs), f"seed {seed}: {ours.tolist()} {theirs.tolist()}"
    assert sum(ended) > 0, ended


def drive(scorer, steps: int, batch: int, beams: int, groups: int, seed: int, tied: bool) -> torch.Tensor:
    """open_clip's calls on a scorer, with random candidates: each step, each group's 2 x group_size best
    (token, score, beam) per image, EOS among them at random ranks, then `finalize`. `tied` draws whole-number
    scores, so finished captions often tie and the order they are kept and picked in decides."""
    rng = torch.Generator().manual_seed(seed)
    size = beams // groups
    input_ids = torch.randint(1, 50, (batch * beams, 1), generator=rng)
    scores = torch.zeros(batch * beams)
    for _ in range(steps):
        next_ids = torch.zeros(batch * beams, dtype=torch.long)
        for group in range(groups):
            rows = [b * beams + group * size + i for b in range(batch) for i in range(size)]
            drawn = (torch.randint(-2, 1, (batch, 2 * size), generator=rng).float() if tied
                     else torch.randn(batch, 2 * size, generator=rng) * 3)
            candidate_scores = torch.sort(drawn, descending=True).values
            tokens = torch.randint(1, 50, (batch, 2 * size), generator=rng)
            ends = torch.rand(batch, 2 * size, generator=rng) < 0.3
            ends &= ends.cumsum(dim=1) <= size  # at least group_size candidates go on, as a model's top-k ensures
            tokens[ends] = EOS
            indices = torch.randint(0, size, (batch, 2 * size), generator=rng)
            out = scorer.process(input_ids[rows], candidate_scores, tokens, indices, pad_token_id=PAD,
                                 eos_token_id=torch.tensor([EOS]), group_index=group)
            scores[rows] = out["next_beam_scores"]
            input_ids[rows] = input_ids[rows][out["next_beam_indices"]]
            next_ids[rows] = out["next_beam_tokens"]
        input_ids = torch.cat([input_ids, next_ids[:, None]], dim=1)
        if scorer.is_done:
            break
    return scorer.finalize(input_ids, scores, None, None, max_length=steps + 1, pad_token_id=PAD,
                           eos_token_id=torch.tensor([EOS]))["sequences"]


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("beams, groups", [(6, 3), (4, 1), (6, 2), (8, 2)])
def test_scorer_matches_on_random_candidates(reference_scorer, beams, groups, tied):
    for seed in range(40):
        steps = 3 + seed % 9
        ours = drive(beam_search.GroupBeamScorer(3, beams, torch.device("cpu"), num_beam_groups=groups), steps, 3,
                     beams, groups, seed, tied)
        theirs = drive(reference_scorer(batch_size=3, num_beams=beams, device=torch.device("cpu"),
                                        num_beam_groups=groups), steps, 3, beams, groups, seed, tied)
        assert torch.equal(ours, theirs), f"seed {seed}"


def test_install_leaves_a_transformers_with_the_scorer_alone():
    module = types.SimpleNamespace(_has_transformers=True, BeamSearchScorer="theirs")
    beam_search.install(module)
    assert module.BeamSearchScorer == "theirs"
