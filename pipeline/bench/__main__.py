"""`python -m pipeline.bench`: this pipeline's speed as ratios against references measured in the same run.

1. sweep: D synthetic webdatasets x 4 prompt sets with a random ViT-B-32 checkpoint, one multirun of this pipeline
   (cold store) against `clip_benchmark eval --no_amp` once per (dataset, prompt set);
2. cached rerun: the same sweep again, per job, beyond a bare interpreter start with the same imports (the modules
   the rerun itself imported, recorded as it exits);
3. large classifier: one job with open_clip's 80 ImageNet templates on 25 classes against one `clip_benchmark eval`
   with the same templates, both fp32;
4. image embedding: the embed stage against a bare `DataLoader -> encode_image` loop (same DataLoader settings);
5. open_clip's table: `python -m pipeline.aggregate layout=openclip38` over 121 models x 38 datasets of result files
   against a process reading those files with json and pandas alone;
6. store size: a cache lookup (with and without the tags index), a claims listing, reading a sweep's job runs,
   reading every job run, and a cached job, on a SQLite store of 1,000, 10,000 and 100,000 runs;
8. open_clip's suite fully cached: the 121 x 38 = 4,598-job multirun over a synthetic store holding every job's
   score, planned (`plan=true`) and run (every job served from its plan), beyond a bare interpreter start;
9. a table over a store's every result: 1,000 / 10,000 / 50,000 job runs (ten runs each), through MLflow's search
   run by run against the store's index, built afresh and up to date.

Targets: (1) >= 4x, (2) <= 0.1 s a job, (3) >= 3x, (4) >= 0.95, (5) <= 2x, (6) flat in the store's size,
(8) <= 0.1 s a job beyond the start and the whole suite < 60 s, (9) < 5 s at 50,000 results.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from pipeline import CONF_DIR
from pipeline.bench import embedding, fixtures, tables
from pipeline.bench.processes import (BenchFailure, Dataset, Model, Settings, bare_command, clip_benchmark_command,
                                      dataset_configs, pipeline_arguments, pipeline_command, recording_command, seconds)
from pipeline.data import datasets, prompts
from pipeline.models.loading import ModelLoader, ModelSpec, resolve_device

SWEEP_PROMPTS = ["dataset", "classname", "a_photo_of", "simple_imagenet"]


def templates_of(prompt_set: str, dataset: Dataset) -> list[str]:
    """The templates a prompt set resolves to on `dataset`, as this pipeline resolves them."""
    spec = datasets.DatasetSpec(dataset.name, "zeroshot_classification", str(dataset.root), "test", "acc1")
    info = datasets.describe(spec)
    from hydra_plugins.clip_tables import launcher

    launcher.install()  # the config names this project's sweeper
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"prompts={prompt_set}"]).prompts
    resolved = prompts.resolve(cfg, dataset.name, info.templates, info.classnames)
    assert isinstance(resolved, list), f"{prompt_set} is not a template list"
    return resolved


def line(label: str, value: float, unit: str = "s", note: str = "") -> None:
    print(f"  {label:<58} {value:8.2f} {unit}  {note}".rstrip())


def sweep_and_rerun(model: Model, sets: list[Dataset], settings: Settings, scratch: Path) -> None:
    env = {"CLIP_TABLES_OUTPUTS": str(scratch / "sweep")}
    reference = sum(seconds(clip_benchmark_command(model, dataset, templates_of(name, dataset), settings, scratch, name))
                    for dataset in sets for name in SWEEP_PROMPTS)
    arguments = pipeline_arguments(model, sets, SWEEP_PROMPTS, settings, dataset_configs(scratch, sets))
    cold = seconds(pipeline_command(arguments), env)
    jobs = len(sets) * len(SWEEP_PROMPTS)
    print(f"1. prompt-set sweep: {len(sets)} datasets x {len(SWEEP_PROMPTS)} prompt sets ({','.join(SWEEP_PROMPTS)})")
    line(f"clip_benchmark eval --no_amp, {jobs} processes", reference)
    line("this pipeline, one multirun, empty store", cold, note=f"speed-up {reference / cold:.2f}x (target >= 4x)")
    record = scratch / "imported.json"
    warm = min(seconds(recording_command(arguments, record), env) for _ in range(2))
    bare = min(seconds(bare_command(record)) for _ in range(3))
    print(f"2. fully cached rerun of those {jobs} jobs")
    line("the same multirun, every stage cached", warm)
    line("bare interpreter start with the same imports", bare)
    line("per job beyond the interpreter start", (warm - bare) / jobs, note="(target <= 0.1 s)")


def large_classifier(model: Model, dataset: Dataset, settings: Settings, scratch: Path) -> None:
    templates = templates_of("openai_imagenet", dataset)
    reference = seconds(clip_benchmark_command(model, dataset, templates, settings, scratch, "openai_imagenet"))
    arguments = pipeline_arguments(model, [dataset], ["openai_imagenet"], settings, dataset_configs(scratch, [dataset]))
    ours = seconds(pipeline_command(arguments), {"CLIP_TABLES_OUTPUTS": str(scratch / "classifier")})
    classes = len(datasets.describe(datasets.DatasetSpec(dataset.name, "zeroshot_classification", str(dataset.root),
                                                         "test", "acc1")).classnames)
    print(f"3. large classifier: {classes} classes x {len(templates)} templates = {classes * len(templates)} prompts")
    line("clip_benchmark eval --no_amp --custom_template_file", reference)
    line("python -m pipeline prompts=openai_imagenet, empty store", ours, note=f"speed-up {reference / ours:.2f}x (target >= 3x)")


def image_embedding(model: Model, root: Path, settings: Settings, device: torch.device) -> None:
    loaded = ModelLoader(ModelSpec("bench", model.arch, str(model.checkpoint), "fp32"), device).get()
    bare, ours = embedding.compare(loaded, root, settings.batch_size, settings.workers)
    print(f"4. image embedding on {device}: {bare.images} images, batch {settings.batch_size}, {settings.workers} workers")
    line("bare DataLoader -> encode_image", bare.per_second, "img/s")
    line("the embed stage", ours.per_second, "img/s", note=f"ratio {ours.per_second / bare.per_second:.3f} (target >= 0.95)")


def table_from_result_files(scratch: Path) -> None:
    folder = scratch / "openclip_results"
    files = tables.write_result_files(folder)
    env = {"CLIP_TABLES_OUTPUTS": str(scratch / "table"), "XDG_CACHE_HOME": str(scratch / "table" / "cache")}
    reading = min(seconds(tables.reading_command(folder)) for _ in range(3))
    ours = min(seconds(tables.aggregate_command(folder, scratch / "openclip38.csv"), env) for _ in range(2))
    print(f"5. open_clip's table from {files} result files (121 models x 38 datasets)")
    line("python -c: read them with json and pandas", reading)
    line("python -m pipeline.aggregate layout=openclip38", ours, note=f"ratio {ours / reading:.2f} (target <= 2)")


def store_sizes(largest: int, scratch: Path) -> None:
    from pipeline.bench import store as sized

    shapes, checkpoint = bundled_assets()
    outputs = scratch / "store" / "outputs"
    env = {"CLIP_TABLES_OUTPUTS": str(outputs)}
    job = sized.job_command(["model=tiny", f"model.pretrained={checkpoint}", f"dataset.root={shapes}",
                             "prompts=classname", "device=cpu", "num_workers=0"])
    seconds(job, env)  # the real runs the cached job is served from
    store = sized.open_store(outputs)
    sweep_jobs = [run.info.run_id for run in sized.tracking.search_all(store, "tags.stage = 'job'")]
    print("6. store size (SQLite): per lookup with the tags index (without it), claims listing, reading a sweep's "
          "job runs, reading every job run, a cached job")
    print(f"  {'runs':>9} {'lookup ms':>20} {'claims ms':>10} {'sweep read ms':>14} {'all job runs':>18} "
          f"{'cached job s':>13}")
    have = 0
    for size in sized.sizes_for(largest):
        sized.grow_to(store, have, size)
        have = size
        c = sized.measure(store, size, job, env, sweep_jobs)
        print(f"  {c.runs:>9,} {c.lookup_ms:>8.1f} ({c.lookup_unindexed_ms:>8.1f}) {c.claims_ms:>10.1f} "
              f"{c.sweep_read_ms:>14.1f} {c.store_read_s:>8.2f} s ({c.job_runs:>6,}) {c.cached_job_s:>13.2f}")


def cached_suite(scratch: Path) -> None:
    from pipeline.bench import served

    planned, ran, bare, jobs = served.served_suite(scratch)
    print(f"8. open_clip's suite fully cached: {jobs:,} jobs (121 presets x 38 synthetic datasets), SQLite store")
    line("bare interpreter start with the pipeline's imports", bare)
    line("the multirun with plan=true", planned)
    line("the multirun, every job served from its plan", ran, note="(target < 60 s)")
    line("per job beyond the interpreter start", (ran - bare) / jobs, note="(target <= 0.1 s)")


def table_over_stores(sizes: list[int], scratch: Path) -> None:
    from pipeline.bench import served

    print("9. a table over every result of a store (SQLite, ten runs per job run): through MLflow's search, through "
          "the index built afresh, through the index up to date")
    print(f"  {'results':>9} {'searched s':>11} {'index built s':>14} {'index s':>8}")
    for size, searched, built, warm in served.table_over_stores(scratch, tuple(sizes)):
        print(f"  {size:>9,} {searched:>11.2f} {built:>14.2f} {warm:>8.2f}" + ("  (target < 5 s)" if size >= 50_000
                                                                               else ""))


def bundled_assets() -> tuple[Path, Path]:
    """The bundled shapes dataset and tiny checkpoint (built on first use), as `make demo` uses them."""
    from pipeline.offline.shapes import ensure_shapes
    from pipeline.offline.tiny_clip import ensure_checkpoint

    outputs = Path("outputs").resolve()
    runs = outputs / "models" / "tiny-clip-run" / "checkpoints"
    return ensure_shapes(outputs / "data" / "shapes"), ensure_checkpoint(outputs / "models" / "tiny-clip.pt",
                                                                          snapshots=runs)


def lab_stress(rounds: int, scratch: Path) -> None:
    from pipeline.bench import lab

    shapes, final = bundled_assets()
    runs = final.parent / "tiny-clip-run" / "checkpoints"
    assets = ["model=tiny", f"model.pretrained={runs / 'step_300.pt'},{final}", f"dataset.root={shapes}"]
    print(f"7. lab server under load: {rounds} rounds of 8 parallel jobs (2 checkpoints x 4 prompt sets), "
          f"authentication on, PostgreSQL, a worker with EDIT only, telemetry as on a user's machine")
    done = lab.stress(assets, rounds, scratch)
    mean = lambda values: sum(values) / len(values)
    line("cold sweep, mean over rounds", mean([r.cold_s for r in done]),
         note=f"(min {min(r.cold_s for r in done):.1f}, max {max(r.cold_s for r in done):.1f})")
    line("cached sweep, mean over rounds", mean([r.cached_s for r in done]))
    line("store requests per job, cold", mean([r.cold_requests for r in done]) / 8, "req")
    line("store requests per job, cached", mean([r.cached_requests for r in done]) / 8, "req")
    print(f"  {len(done)} of {rounds} rounds: every key computed once, no run lost, no claim left held, the second "
          f"sweep served from the cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture, randomly initialised")
    parser.add_argument("--images", type=int, default=160, help="images per sweep dataset (benchmarks 1-2)")
    parser.add_argument("--datasets", type=int, default=2, help="sweep datasets (benchmarks 1-2)")
    parser.add_argument("--classes", type=int, default=25, help="classes for benchmark 3 (10 images each)")
    parser.add_argument("--embed-images", type=int, default=512, help="images for benchmark 4")
    parser.add_argument("--embed-size", type=int, default=256, help="side of benchmark 4's JPEG-sized images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store-runs", type=int, default=100_000, help="the largest store of benchmark 6")
    parser.add_argument("--table-results", default="1000,10000,50000", help="store sizes of benchmark 9, in results")
    parser.add_argument("--only", default="1,3,4,5,6,8,9", help="which benchmarks (2 always runs with 1; lab: the "
                                                             "server under load, a stress run of its own)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the lab stress run")
    parser.add_argument("--scratch", type=Path, default=None, help="keep the generated data here (default: a temp dir)")
    args = parser.parse_args()
    chosen = set(args.only.split(","))
    settings = Settings(args.batch_size, args.workers)
    device = resolve_device("auto")
    with tempfile.TemporaryDirectory() as temporary:
        scratch = (args.scratch or Path(temporary)).resolve()
        model = Model(args.arch, fixtures.random_checkpoint(scratch / f"{args.arch}-random.pt", args.arch))
        print(f"{args.arch} (random init), {device}, {torch.get_num_threads()} CPU threads, "
              f"batch {settings.batch_size}, {settings.workers} workers")
        try:
            if "1" in chosen:
                sets = [Dataset(f"bench{i}", fixtures.shapes(scratch / f"bench{i}", args.images, seed=10 + i))
                        for i in range(args.datasets)]
                sweep_and_rerun(model, sets, settings, scratch)
            if "3" in chosen:
                root = fixtures.named_classes(scratch / "named", fixtures.imagenet_classnames(args.classes), 10, seed=3)
                large_classifier(model, Dataset("named", root), settings, scratch)
            if "5" in chosen:
                table_from_result_files(scratch)
            if "6" in chosen:
                store_sizes(args.store_runs, scratch)
            if "8" in chosen:
                cached_suite(scratch)
            if "9" in chosen:
                table_over_stores([int(size) for size in args.table_results.split(",")], scratch)
            if "lab" in chosen:
                lab_stress(args.rounds, scratch)
            if "4" in chosen:
                root = fixtures.named_classes(scratch / "embed", fixtures.imagenet_classnames(16),
                                              args.embed_images // 16, seed=4, size=args.embed_size)
                image_embedding(model, root, settings, device)
        except BenchFailure as exc:
            raise SystemExit(f"bench failed: {exc}")


if __name__ == "__main__":
    main()
