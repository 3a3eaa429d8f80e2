"""The group beam search open_clip's CoCa captions with, on transformers 5.

open_clip 3.3's `CoCa.generate` (the call clip_benchmark's captioning makes) runs its own diverse beam search loop
and keeps the finished hypotheses with transformers' `BeamSearchScorer`. transformers 5 removed that class (group
beam search moved to a Hub extension), and open_clip then refuses to generate at all. `GroupBeamScorer` is written
here because no installed library has it any more: it keeps the hypotheses exactly as transformers 4.57's
`BeamSearchScorer` does for the arguments open_clip passes (length penalty 1, no early stopping, one hypothesis
kept, no beam indices); `tests/models/test_beam_search.py` runs 4.57's own scorer against it, token for token.
`install` hands it to open_clip only where transformers lacks the original. A change here that can change a
caption bumps `pipeline.stages.generate.VERSION`, so no cached caption outlives it."""
from __future__ import annotations

import heapq
import importlib
from dataclasses import dataclass, field
from types import ModuleType

import torch

# What open_clip's coca_model imports from transformers, besides the scorer; all still exist in transformers 5.
GENERATION_NAMES = ("LogitsProcessorList", "TopPLogitsWarper", "TopKLogitsWarper", "RepetitionPenaltyLogitsProcessor",
                    "MinLengthLogitsProcessor", "MaxLengthCriteria", "StopStringCriteria", "EosTokenCriteria",
                    "StoppingCriteriaList")


@dataclass
class Finished:
    """The best `size` finished hypotheses of one (image, group): (score, tokens), where score is the summed
    log-probability over the generated length (transformers' length penalty 1)."""

    size: int
    hypotheses: list[tuple[float, int, torch.Tensor]] = field(default_factory=list)  # a min-heap on score
    added: int = 0  # ties keep insertion order, as transformers' sort does

    def add(self, tokens: torch.Tensor, summed: float, length: int) -> None:
        score = summed / length
        if len(self.hypotheses) < self.size:
            heapq.heappush(self.hypotheses, (score, self.added, tokens))
        elif score > self.hypotheses[0][0]:
            heapq.heapreplace(self.hypotheses, (score, self.added, tokens))
        self.added += 1

    def done(self, best_next: float, length: int) -> bool:
        """No open beam can beat the worst kept hypothesis any more (transformers' `early_stopping=False` rule)."""
        return len(self.hypotheses) == self.size and self.hypotheses[0][0] >= best_next / length


class GroupBeamScorer:
    """`transformers.BeamSearchScorer`'s interface as open_clip's `_generate_beamsearch` uses it: `process` picks
    each group's next beams and sets aside those that end, `finalize` returns the best hypothesis per image."""

    def __init__(self, batch_size: int, num_beams: int, device: torch.device, num_beam_groups: int = 1) -> None:
        if num_beams <= 1 or num_beams % num_beam_groups:
            raise ValueError(f"num_beams={num_beams} must be above 1 and a multiple of num_beam_groups={num_beam_groups}")
        self.num_beams, self.num_beam_groups, self.device = num_beams, num_beam_groups, device
        self.group_size = num_beams // num_beam_groups
        # one per (image, group), image-major: open_clip reads the batch size from its length
        self._beam_hyps = [Finished(self.group_size) for _ in range(batch_size * num_beam_groups)]
        self._done = [False] * len(self._beam_hyps)

    @property
    def is_done(self) -> bool:
        return all(self._done)

    def process(self, input_ids: torch.Tensor, next_scores: torch.Tensor, next_tokens: torch.Tensor,
                next_indices: torch.Tensor, pad_token_id: int, eos_token_id: torch.Tensor, beam_indices=None,
                group_index: int = 0) -> dict[str, torch.Tensor]:
        """From each image's 2 x group_size best candidates of this group: the first group_size that do not end
        become the next beams; an ending one among the top group_size is kept as a finished hypothesis."""
        batch_size, group = len(self._beam_hyps) // self.num_beam_groups, self.group_size
        scores = torch.zeros((batch_size, group), dtype=next_scores.dtype, device=input_ids.device)
        tokens = torch.zeros((batch_size, group), dtype=next_tokens.dtype, device=input_ids.device)
        indices = torch.zeros((batch_size, group), dtype=next_indices.dtype, device=input_ids.device)
        ends = {int(t) for t in torch.as_tensor(eos_token_id).reshape(-1)}
        length = input_ids.shape[-1] + 1
        for image in range(batch_size):
            slot = image * self.num_beam_groups + group_index
            if self._done[slot]:
                tokens[image] = pad_token_id
                continue
            kept = 0
            for rank, (token, score, index) in enumerate(zip(next_tokens[image], next_scores[image], next_indices[image])):
                row = image * group + index
                if int(token) in ends:
                    if rank < group:
                        self._beam_hyps[slot].add(input_ids[row].clone(), score.item(), length)
                    continue
                scores[image, kept], tokens[image, kept], indices[image, kept] = score, token, row
                kept += 1
                if kept == group:
                    break
            if kept < group:
                raise ValueError(f"more than {group} of the candidates {next_tokens[image].tolist()} end the caption")
            self._done[slot] = self._beam_hyps[slot].done(next_scores[image].max().item(), length)
        return {"next_beam_scores": scores.view(-1), "next_beam_tokens": tokens.view(-1),
                "next_beam_indices": indices.view(-1)}

    def finalize(self, input_ids: torch.Tensor, final_beam_scores: torch.Tensor, final_beam_tokens, final_beam_indices,
                 max_length: int, pad_token_id: int, eos_token_id: torch.Tensor, beam_indices=None) -> dict[str, torch.Tensor]:
        """Open beams join the finished ones; each image's best across its groups, padded, ended by an EOS where
        shorter than the longest (capped at `max_length`)."""
        for slot, finished in enumerate(self._beam_hyps):
            if self._done[slot]:
                continue
            for offset in range(self.group_size):
                row = slot * self.group_size + offset
                finished.add(input_ids[row], final_beam_scores[row].item(), input_ids.shape[-1])
        best = [self._best(slot) for slot in range(0, len(self._beam_hyps), self.num_beam_groups)]
        lengths = [len(tokens) for tokens in best]
        width = min(max(lengths) + 1, max_length) if max_length is not None else max(lengths) + 1
        sequences = input_ids.new_full((len(best), width), pad_token_id)
        end = int(torch.as_tensor(eos_token_id).reshape(-1)[0])
        for row, tokens in enumerate(best):
            sequences[row, :len(tokens)] = tokens
            if len(tokens) < width:
                sequences[row, len(tokens)] = end
        return {"sequences": sequences}

    def _best(self, first_slot: int) -> torch.Tensor:
        """An image's best hypothesis over its groups; of equal scores, the last in (group, insertion) order, as
        transformers' stable sort followed by `pop` picks it."""
        groups = self._beam_hyps[first_slot:first_slot + self.num_beam_groups]
        candidates = [(score, group, added, tokens) for group, finished in enumerate(groups)
                      for score, added, tokens in finished.hypotheses]
        return max(candidates, key=lambda c: c[:3])[3]


def install(coca_model: ModuleType | None = None) -> None:
    """Give open_clip's coca_model the scorer (and the transformers names its import failed to bind) when the
    installed transformers has no `BeamSearchScorer`; does nothing where it has one."""
    module = coca_model or importlib.import_module("open_clip.coca_model")
    if getattr(module, "_has_transformers", False):
        return
    import transformers

    for name in GENERATION_NAMES:
        setattr(module, name, getattr(transformers, name))
    module.BeamSearchScorer = GroupBeamScorer
    module.GENERATION_TYPES = {"top_k": transformers.TopKLogitsWarper, "top_p": transformers.TopPLogitsWarper,
                               "beam_search": "beam_search"}
    module._has_transformers = True
