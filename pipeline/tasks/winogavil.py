"""WinoGAViL, as DataComp scores it (wino_eval.py): each game's cue against its candidate images, the top-n chosen
with DataComp's own `np.argsort`, scored by Jaccard index overall and by game size; the cues are its texts.
Resampled by game."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from pipeline.data.datasets import DatasetInfo, DatasetSpec
from pipeline.stages.score import TaskScores, metrics, ties, uncertainty
from pipeline.tasks import Task

if TYPE_CHECKING:
    import torch

    from pipeline.models.loading import ModelLoader
    from pipeline.models.precision import Recipe
    from pipeline.stages import StageResult
    from pipeline.stages.embed import Texts
    from pipeline.store.artifacts import StageOutput


class WinoGAViL(Task):
    name = "winogavil"
    formats = ("hf",)
    metrics = metrics.WINOGAVIL_METRICS

    def encode_images(self, loader: ModelLoader, spec: DatasetSpec, precision: str, batch_size: int,
                      num_workers: int) -> StageOutput:
        return encode_winogavil_images(loader, spec, precision, batch_size, num_workers)

    def texts(self, dataset: DatasetInfo, images: Callable[[], StageResult]) -> Texts:
        return lambda: ([str(cue) for cue in images()["cues"]], {})

    def outputs(self, images: StageResult, text: StageResult, recipe: Recipe, device: torch.device) -> StageOutput:
        return winogavil_outputs(images, text, recipe, device)

    def scores(self, spec: DatasetSpec, upstream: Mapping[str, StageResult], options: Mapping[str, Any]
               ) -> TaskScores:
        return winogavil_scores(spec, upstream["embed_image"], upstream["classify"])


def winogavil_cue_text(cue: str) -> str:
    """DataComp's WinoGAViL prompt: "A {cue}" or "An {cue}", lower-cased."""
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in "aeiou" else f"A {cue}"


def encode_winogavil_images(loader: ModelLoader, spec: DatasetSpec, precision: str, batch_size: int,
                            num_workers: int) -> StageOutput:
    """Every game's candidate images, flattened, with each game's size, true associations and cue text."""
    import torch

    from pipeline.data import reading
    from pipeline.data.readers import Batch
    from pipeline.stages.embed.images import encode_batches
    from pipeline.store.artifacts import StageOutput

    loaded = loader.get()
    sizes, truth, cues = [], [], []

    def collect(batch) -> None:
        for game in batch.fields["game"]:
            sizes.append(len(game.candidates))
            truth.extend(np.isin(game.candidates, game.associations))
            cues.append(winogavil_cue_text(game.cue))

    # One game per batch: its candidates are the images DataComp encodes together.
    games = (Batch(torch.stack([loaded.preprocess(image) for image in game.images]), {"game": [game]})
             for game in reading.winogavil_instances(spec))
    encoded = encode_batches(loaded, games, spec, precision, collect)
    return StageOutput(arrays={**encoded.arrays, "game_sizes": np.array(sizes, dtype=np.int64),
                               "associations": np.array(truth, dtype=bool), "cues": np.array(cues, dtype=str)},
                       metrics=encoded.metrics)


def winogavil_outputs(images: StageResult, text: StageResult, recipe: Recipe, device: torch.device) -> StageOutput:
    from pipeline.stages.classify import equal_product, normalized_pair
    from pipeline.store.artifacts import StageOutput

    image_features, cue_features = normalized_pair(images.arrays, text.arrays, recipe, device)
    chosen, tied, start = [], [], 0
    truth = images["associations"]
    for game, size in enumerate(images["game_sizes"]):
        # wino_eval.py: `text_features @ image_features.T` for one cue against its candidates; DataComp's own
        # `np.argsort` then orders their ties, and `tied` records each game whose choice fell on one
        similarities = equal_product(cue_features[game][None], image_features[start:start + size].T, recipe, device)[0]
        n_chosen = int(truth[start:start + size].sum())
        chosen.append(metrics.winogavil_predictions(similarities, n_chosen))
        tied.append(ties.chosen_by_tie(similarities, n_chosen))
        start += size
    return StageOutput(arrays={"chosen": np.concatenate(chosen), "tied": np.array(tied, dtype=bool)})


def winogavil_scores(spec: DatasetSpec, images: StageResult, predicted: StageResult) -> TaskScores:
    bounds = np.cumsum(images["game_sizes"])[:-1]
    truths = np.split(images["associations"], bounds)
    chosen = np.split(predicted["chosen"], bounds)
    outcomes = {"game_scores": metrics.winogavil_jaccards(truths, chosen), "game_sizes": images["game_sizes"]}
    values = {**metrics.winogavil_breakdown(outcomes["game_scores"], outcomes["game_sizes"]),
              "num_games": float(len(truths)), ties.TIES: float(predicted["tied"].sum())}
    replicates = winogavil_replicates(outcomes, seed=uncertainty.dataset_seed(spec.name))
    return TaskScores(values, outcomes, replicates, len(truths),
                  uncertainty.structure_digest([outcomes["game_sizes"], images["associations"]]))


def winogavil_replicates(outcomes: Mapping[str, np.ndarray], resamples: int = uncertainty.RESAMPLES,
                         seed: int | Sequence[int] = uncertainty.SEED) -> dict[str, np.ndarray]:
    """Games resampled: each WinoGAViL average over the drawn games' Jaccard scores."""
    scores, sizes = outcomes["game_scores"], outcomes["game_sizes"]
    return uncertainty.collect(uncertainty.draws(len(scores), resamples, seed), lambda idx: metrics.winogavil_breakdown(scores[idx], sizes[idx]))
