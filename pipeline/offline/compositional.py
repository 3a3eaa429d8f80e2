"""Stand-ins for SugarCrepe and Winoground in each one's own layout, drawn from the coloured shapes, so the
image-caption selection task runs offline: SugarCrepe as clip_benchmark lays it out (COCO-named JPEGs in
`val2017/` beside the seven `<subset>.json`), Winoground as the Hub's parquet rows (`id`, `image_0`, `image_1`,
`caption_0`, `caption_1`). A negative caption names another colour of the same shape, adds an object, or swaps the
colour and shape words, as SugarCrepe's subsets replace, add and swap."""
from __future__ import annotations

import json
import random
from pathlib import Path

from pipeline.offline import shapes

SUGAR_CREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def other_colour(label: int, rng: random.Random) -> int:
    """A class of the same shape in another colour."""
    colours = len(shapes.COLOURS)
    return label - label % colours + (label % colours + rng.randrange(1, colours)) % colours


def caption(label: int) -> str:
    return f"a photo of a {shapes.CLASSNAMES[label]}."


def negative(subset: str, label: int, rng: random.Random) -> str:
    """A hard negative in the subset's spirit: another colour (replace), an added object (add), the colour and
    shape words swapped (swap)."""
    colour, shape = shapes.CLASSNAMES[label].split()
    if subset.startswith("swap"):
        return f"a photo of a {shape} {colour}."
    if subset.startswith("add"):
        return f"a photo of a {colour} {shape} and a {shapes.CLASSNAMES[other_colour(label, rng)]}."
    return caption(other_colour(label, rng))


def write_sugar_crepe(root: Path, entries: int = 10, seed: int = 3) -> Path:
    """`val2017/` holds 24 images; each subset's entries use some of them (subsets share images, as SugarCrepe's
    share COCO's, and an image may serve several entries of one subset)."""
    rng = random.Random(seed)
    samples = shapes.generate(2, seed)
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    names = [f"{397133 + 7 * index:012d}.jpg" for index in range(len(samples))]  # COCO's 12-digit file names
    for name, sample in zip(names, samples):
        sample.image.save(root / "val2017" / name, format="jpeg", quality=95)
    for subset in SUGAR_CREPE_SUBSETS:
        chosen = [rng.randrange(len(samples)) for _ in range(entries)]
        annotations = {str(3 * number + 1): {"filename": names[index], "caption": caption(samples[index].label),
                                             "negative_caption": negative(subset, samples[index].label, rng)}
                       for number, index in enumerate(chosen)}
        (root / f"{subset}.json").write_text(json.dumps(annotations, indent=1))
    return root


def winoground_rows(examples: int = 12, seed: int = 4) -> tuple[dict, object]:
    """Each example: two shapes of one kind in two colours, each image with the caption naming its colour."""
    import datasets as hf

    rng = random.Random(seed)
    columns: dict[str, list] = {"id": [], "image_0": [], "image_1": [], "caption_0": [], "caption_1": []}
    for example in range(examples):
        first = rng.randrange(len(shapes.CLASSNAMES))
        second = other_colour(first, rng)
        columns["id"].append(example)
        for slot, label in enumerate((first, second)):
            columns[f"image_{slot}"].append(shapes.draw_shape(label, rng))
            columns[f"caption_{slot}"].append(caption(label))
    features = hf.Features({"id": hf.Value("int32"), "image_0": hf.Image(), "image_1": hf.Image(),
                            "caption_0": hf.Value("string"), "caption_1": hf.Value("string")})
    return columns, features


def write_winoground(root: Path, examples: int = 12, seed: int = 4) -> Path:
    """The rows as one parquet file of the `test` split, as the Hub's parquet conversion names it."""
    import datasets as hf

    columns, features = winoground_rows(examples, seed)
    (root / "data").mkdir(parents=True, exist_ok=True)
    hf.Dataset.from_dict(columns, features=features).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def ensure_compositional(data_root: Path) -> tuple[Path, Path]:
    """`<data_root>/sugar_crepe` and `<data_root>/winoground`, where `data_root=` finds a mirror of them."""
    return (shapes.written_once(data_root / "sugar_crepe", write_sugar_crepe),
            shapes.written_once(data_root / "winoground", write_winoground))
