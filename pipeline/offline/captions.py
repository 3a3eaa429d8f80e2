"""A stand-in for clip_benchmark's MSCOCO caption set (wds_mscoco_captions), drawn from the coloured shapes: each
image with five reference captions, one per line of its `txt`, as COCO's five. The folder is a mirror for
`data_root=outputs/data/captions`, so `dataset=mscoco_captions` reads it in the public copy's layout."""
from __future__ import annotations

import io
from pathlib import Path

import webdataset as wds

from pipeline.data import sources
from pipeline.offline import shapes

PHRASES = ("a photo of a {c}.", "A {c} on a white background.", "a small {c} in the middle of the picture",
           "A drawing of a {c}.", "There is one {c} here.")


def references(label: int) -> list[str]:
    return [phrase.format(c=shapes.CLASSNAMES[label]) for phrase in PHRASES]


def write_captions(root: Path, per_class: int = 2, seed: int = 5) -> Path:
    """`test/0.tar` of JPEGs with their captions, `nshards.txt`, and `dataset_type.txt` saying retrieval."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(root / "test" / "0.tar")) as sink:
        for index, sample in enumerate(shapes.generate(per_class, seed)):
            image = io.BytesIO()
            sample.image.save(image, format="jpeg", quality=95)
            sink.write({"__key__": f"s{index:07d}", "jpg": image.getvalue(), "txt": "\n".join(references(sample.label))})
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "dataset_type.txt").write_text("retrieval\n")
    return root


def ensure_captions(data_root: Path) -> Path:
    """The stand-in under `data_root` where `dataset=mscoco_captions` looks for its mirror, written once."""
    folder = Path(sources.dataset_root(str(data_root), "clip_benchmark", "mscoco_captions"))
    return shapes.written_once(folder, write_captions)
