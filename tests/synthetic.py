"""Synthetic stand-ins for every task type, written in each source's real on-disk layout.

Images are the bundled coloured shapes, so the tiny model scores well above chance on all of them.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from pipeline.data.sources import dataset_root
from pipeline.offline import shapes

CLASSES = shapes.CLASSNAMES


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    return buffer.getvalue()


def _samples(per_class: int, seed: int) -> list[shapes.ShapeSample]:
    return shapes.generate(per_class, seed)


def write_wds_classification(root: Path, per_class: int = 3, seed: int = 0, metadata_fields: int = 0,
                             groups: int = 3) -> Path:
    """CLIP_benchmark's webdataset layout; with `metadata_fields`, a per-sample int `.npy` as in DataComp's WILDS shards."""
    rng = np.random.default_rng(seed)
    (root / "test").mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(root / "test" / "0.tar")) as sink:
        for index, sample in enumerate(_samples(per_class, seed)):
            record = {"__key__": f"s{index:07d}", "png": _png(sample.image), "cls": sample.label}
            if metadata_fields:
                record["npy"] = rng.integers(0, groups, metadata_fields).astype(np.int64)
            sink.write(record)
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(shapes.TEMPLATES) + "\n")
    return root


def write_imagenet_stand_in(root: Path, classes: list[int], per_class: int = 2, seed: int = 0) -> Path:
    """DataComp's ImageNet-1k layout with its 1,000 class names (clip_benchmark's English ones), holding shapes
    images labelled with the given ImageNet classes: shape i of the 12 stands for class `classes[i]`."""
    import json
    from importlib import resources

    names = json.loads(resources.files("clip_benchmark.datasets").joinpath("en_classnames.json").read_text())
    (root / "test").mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(root / "test" / "0.tar")) as sink:
        for index, sample in enumerate(_samples(per_class, seed)):
            if sample.label < len(classes):
                sink.write({"__key__": f"s{index:07d}", "png": _png(sample.image), "cls": classes[sample.label]})
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(names["imagenet1k"]) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    return root


def write_lines_retrieval(root: Path, layout: dict, languages: list[str], missing: int = 1, seed: int = 0) -> Path:
    """A multilingual retrieval set in the `lines` layout a dataset config names (an index, one captions file per
    language at its path), its images in `root/images`; the last `missing` images of the index are absent."""
    from pipeline.data.readers.lines import Layout

    shape = Layout.from_cfg(layout)
    samples = _samples(1, seed)
    names = [f"{index:012d}.jpg" for index in range(len(samples))]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, sample in list(zip(names, samples))[:len(samples) - missing]:
        sample.image.save(root / "images" / name, format="jpeg")
    files = {shape.index: names, **{shape.captions_of(language): [f"{language}: a photo of a {CLASSES[s.label]}."
                                                                   for s in samples] for language in languages}}
    for relative, lines in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_crossmodal_stand_in(root: Path, languages: list[str], missing: int = 1, seed: int = 0) -> Path:
    """Crossmodal-3600's layout: `captions.zip` holding `captions.jsonl` (a line per image: `image/key`, and per
    language its captions, two here) and `images/<key>.jpg`; the last `missing` images are absent."""
    import json
    import zipfile

    samples = _samples(1, seed)
    keys = [f"{index:016x}" for index in range(1, len(samples) + 1)]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for key, sample in list(zip(keys, samples))[:len(samples) - missing]:
        sample.image.save(root / "images" / f"{key}.jpg", format="jpeg")
    records = [{"image/key": key, **{language: {"caption": [f"{language}: a photo of a {CLASSES[s.label]}.",
                                                            f"{language}: another caption"]} for language in languages}}
               for key, s in zip(keys, samples)]
    with zipfile.ZipFile(root / "captions.zip", "w") as archive:
        archive.writestr("captions.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    return root


def captions_for(label: int, index: int) -> list[str]:
    """Two captions naming the class; the picture number keeps captions of same-class images distinct (no ties)."""
    name = CLASSES[label]
    return [f"a photo of a {name}, picture {index}.", f"a drawing of a {name}, picture {index}."]


def write_wds_retrieval(root: Path, per_class: int = 2, seed: int = 0) -> Path:
    """CLIP_benchmark's retrieval webdataset: image + newline-separated captions, dataset_type.txt = retrieval."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(root / "test" / "0.tar")) as sink:
        for index, sample in enumerate(_samples(per_class, seed)):
            sink.write({"__key__": f"s{index:07d}", "png": _png(sample.image),
                        "txt": "\n".join(captions_for(sample.label, index))})
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "dataset_type.txt").write_text("retrieval\n")
    return root


def _write_parquet(root: Path, columns: dict, features) -> Path:
    import datasets as hf

    (root / "data").mkdir(parents=True, exist_ok=True)
    hf.Dataset.from_dict(columns, features=features).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def write_hf_retrieval(root: Path, per_class: int = 2, seed: int = 0) -> Path:
    """An nlphuji retrieval dataset as a parquet repository: columns `image` and `caption` (a list)."""
    return _write_parquet(root, *retrieval_rows(per_class, seed))


def write_hf_winogavil(root: Path, games: int = 12, seed: int = 0) -> Path:
    """nlphuji/winogavil's columns: `cue`, `candidates`, `associations`, `candidate_images`; 5/6/10/12 candidates."""
    return _write_parquet(root, *winogavil_rows(games, seed))


def write_image_folder(root: Path, per_class: int = 3, seed: int = 0) -> Path:
    """One folder per class (underscores for spaces), as the blog's Miniplaces run reads it."""
    for index, sample in enumerate(_samples(per_class, seed)):
        folder = root / "test" / CLASSES[sample.label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        sample.image.save(folder / f"{index:05d}.png")
    return root


QUADRANT = 16  # the side of a quadrant of the 32×32 shapes


def write_quadrant_folder(root: Path, seed: int = 7) -> dict[str, tuple[int, int]]:
    """One image per class in image-folder layout, its object inside one 16×16 quadrant (class by class, each
    quadrant three times); returns each class's quadrant as (column, row)."""
    rng = random.Random(seed)
    quadrants = {}
    for label, name in enumerate(CLASSES):
        column, row = label % 2, (label // 2) % 2
        image = shapes.draw_shape(label, rng, region=(column * QUADRANT, row * QUADRANT, QUADRANT))
        folder = root / "test" / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / "0.png")
        quadrants[name] = (column, row)
    return quadrants


def write_voc_devkit(root: Path, images: int = 60, seed: int = 0, split: str = "test") -> np.ndarray:
    """A VOC devkit folder (`root/VOC2007/`): JPEG images and each class's `<class>_<split>.txt` with random flags,
    every class present at least once; returns the flags, (images, classes) of 1, -1, 0."""
    from pipeline.data.readers import voc

    rng = np.random.default_rng(seed)
    folder = root / voc.YEAR
    (folder / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (folder / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    flags = rng.choice([1, -1, 0], p=[0.4, 0.5, 0.1], size=(images, len(voc.CLASSES))).astype(np.int8)
    flags[rng.integers(0, images, len(voc.CLASSES)), np.arange(len(voc.CLASSES))] = 1
    ids = [f"{index * 3 + 1:06d}" for index in range(images)]  # VOC's test ids skip numbers too
    for image_id, sample in zip(ids, shapes.generate(images // len(CLASSES) + 1, seed)):
        sample.image.save(folder / "JPEGImages" / f"{image_id}.jpg", format="jpeg")
    for column, name in enumerate(voc.CLASSES):
        lines = [f"{image_id} {flag:2d}" for image_id, flag in zip(ids, flags[:, column])]
        (folder / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return flags


def write_mirror(data_root: Path, datasets: list[dict]) -> Path:
    """A local mirror of catalog datasets, each at the path `dataset_root` gives it (what data_root= points at)."""
    for seed, spec in enumerate(datasets):
        root = Path(dataset_root(str(data_root), spec["source"], spec["name"]))
        if spec["task"] == "zeroshot_retrieval":
            write_hf_retrieval(root, seed=seed)
        elif spec["task"] == "winogavil":
            write_hf_winogavil(root, seed=seed)
        elif spec["task"] == "multilabel_classification":
            write_voc_devkit(root, seed=seed)
        else:
            fields = len(spec.get("metadata_fields") or ())
            groups = len(spec.get("region_names") or ()) or 3
            write_wds_classification(root, seed=seed, metadata_fields=fields, groups=groups)
    return data_root


def write_datacomp_hf_cache(data_dir: Path, repo_id: str, rows: dict, features) -> Path:
    """What DataComp's download_evalsets.py leaves: `load_dataset(repo_id, cache_dir=<data_dir>/hf_cache)` with
    datasets 2.8 writes `<org>___<name>/default/0.0.0/<hash>/<name>-test.arrow`, whose images are absolute paths
    into `hf_cache/downloads/extracted/` on the machine that downloaded them."""
    import datasets as hf
    from datasets.arrow_writer import ArrowWriter

    hf_cache = data_dir / "hf_cache"
    extracted = hf_cache / "downloads" / "extracted" / "0f3a9c"
    extracted.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1 << 30))

    def as_path(value):
        if isinstance(value, Image.Image):
            path = extracted / f"{next(counter):06d}.png"
            value.save(path)
            return str(path)
        return [as_path(v) for v in value] if isinstance(value, list) else value

    stored = {name: [as_path(v) for v in values] for name, values in rows.items()}
    org, name = repo_id.split("/")
    folder = hf_cache / f"{org}___{name}" / "default" / "0.0.0" / "5b1a2e"
    folder.mkdir(parents=True, exist_ok=True)
    dataset = hf.Dataset.from_dict(stored, features=features)  # Image() keeps {"path", "bytes": None} for files
    with ArrowWriter(path=str(folder / f"{name}-test.arrow"), features=features) as writer:
        writer.write_table(dataset.with_format("arrow")[:])
        writer.finalize()
    return hf_cache


def retrieval_rows(per_class: int = 2, seed: int = 0):
    import datasets as hf

    samples = _samples(per_class, seed)
    features = hf.Features({"image": hf.Image(), "caption": hf.Sequence(hf.Value("string"))})
    return {"image": [s.image for s in samples],
            "caption": [captions_for(s.label, i) for i, s in enumerate(samples)]}, features


def winogavil_rows(games: int = 12, seed: int = 0):
    import datasets as hf

    rng = random.Random(seed)
    rows = {"cue": [], "candidates": [], "associations": [], "candidate_images": []}
    for game in range(games):
        size = (5, 6, 10, 12)[game % 4]
        labels = rng.sample(range(len(CLASSES)), size)
        colour = CLASSES[labels[0]].split()[0]
        rows["cue"].append(colour)
        rows["candidates"].append([CLASSES[label] for label in labels])
        rows["associations"].append([CLASSES[label] for label in labels if CLASSES[label].startswith(colour)])
        rows["candidate_images"].append([shapes.draw_shape(label, rng) for label in labels])
    features = hf.Features({"cue": hf.Value("string"), "candidates": hf.Sequence(hf.Value("string")),
                            "associations": hf.Sequence(hf.Value("string")),
                            "candidate_images": hf.Sequence(hf.Image())})
    return rows, features
