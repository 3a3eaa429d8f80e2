"""`python -m pipeline.offline`: build the bundled synthetic datasets and tiny checkpoint if they are missing."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.offline.captions import ensure_captions
from pipeline.offline.compositional import ensure_compositional
from pipeline.offline.shapes import ensure_shapes
from pipeline.offline.tiny_clip import ensure_checkpoint
from pipeline.offline.tiny_coca import ensure_coca


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help="the paths.outputs directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("dataset:", ensure_shapes(args.outputs / "data" / "shapes"))
    # SugarCrepe and Winoground stand-ins, a mirror for data_root=outputs/data/compositional
    print("datasets:", *ensure_compositional(args.outputs / "data" / "compositional"))
    # an MSCOCO caption-set stand-in, a mirror for data_root=outputs/data/captions
    print("dataset:", ensure_captions(args.outputs / "data" / "captions"))
    models = args.outputs / "models"
    print("checkpoint:", ensure_coca(models / "tiny-coca.pt"))
    print("checkpoint:", ensure_checkpoint(models / "tiny-clip.pt", snapshots=models / "tiny-clip-run" / "checkpoints"))


if __name__ == "__main__":
    main()
