"""`python -m pipeline.bench`: what the cache saves on a prompt-set sweep, as ratios measured in one run.

Three ways to evaluate one model on one dataset with P prompt sets, on a synthetic shapes test split:
- reference: clip_benchmark's `zeroshot_classification.evaluate` once per prompt set, as running
  `clip_benchmark eval` per pair does (every image re-encoded for each prompt set);
- cold: this pipeline's jobs on an empty tracking store (images encoded once, then served from MLflow);
- warm: the same jobs again (every stage served from the cache).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from pipeline import datasets, prompts
from pipeline.job import run_job
from pipeline.models import ModelLoader, ModelSpec
from pipeline.offline.shapes import write_shapes_webdataset
from pipeline.offline.tiny_clip import ensure_checkpoint

CONF = Path(__file__).resolve().parents[1] / "conf"


def reference_seconds(checkpoint: Path, root: Path, prompt_cfgs: list, batch_size: int) -> float:
    from clip_benchmark.metrics import zeroshot_classification

    loaded = ModelLoader(ModelSpec("tiny", "tiny-clip", str(checkpoint)), torch.device("cpu")).get()
    spec = datasets.DatasetSpec("shapes", "zeroshot_classification", str(root), "test", "acc1")
    info = datasets.describe(spec)
    start = time.perf_counter()
    for prompt_cfg in prompt_cfgs:
        templates = prompts.resolve(prompt_cfg, spec.name, info.templates, info.classnames)
        batches = torch.utils.data.DataLoader(datasets.build(spec, loaded.preprocess).batched(batch_size), batch_size=None)
        zeroshot_classification.evaluate(loaded.model, batches, loaded.tokenizer, info.classnames, templates, "cpu",
                                         amp=False)
    return time.perf_counter() - start


def pipeline_seconds(overrides: list[str], prompt_names: list[str]) -> float:
    start = time.perf_counter()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for name in prompt_names:
            run_job(compose("config", overrides=[*overrides, f"prompts={name}"]))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=200, help="test images per class (12 classes)")
    parser.add_argument("--prompts", default="classname,a_photo_of,dataset,simple_imagenet,openai_imagenet")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--checkpoint", type=Path, default=Path("outputs/models/tiny-clip.pt"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    checkpoint = ensure_checkpoint(args.checkpoint.resolve())
    names = args.prompts.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        root = write_shapes_webdataset(Path(scratch) / "shapes", splits={"test": (args.per_class, 2)})
        overrides = [f"dataset.root={root}", f"model.pretrained={checkpoint}", f"batch_size={args.batch_size}",
                     "num_workers=0", f"tracking.uri=sqlite:///{scratch}/mlflow.db",
                     f"tracking.artifact_location={scratch}/artifacts"]
        with initialize_config_dir(str(CONF), version_base="1.3"):
            prompt_cfgs = [compose("config", overrides=[f"prompts={n}"]).prompts for n in names]
        reference = reference_seconds(checkpoint, root, prompt_cfgs, args.batch_size)
        cold = pipeline_seconds(overrides, names)
        warm = pipeline_seconds(overrides, names)
    images = 12 * args.per_class
    print(f"{len(names)} prompt sets x {images} images, tiny-clip on CPU ({torch.get_num_threads()} threads)")
    print(f"reference (clip_benchmark evaluate per prompt set): {reference:7.2f} s")
    print(f"pipeline, empty cache:                               {cold:7.2f} s   reference/cold = {reference / cold:.2f}x")
    print(f"pipeline, warm cache:                                {warm:7.2f} s   reference/warm = {reference / warm:.2f}x, "
          f"cold/warm = {cold / warm:.2f}x")


if __name__ == "__main__":
    main()
