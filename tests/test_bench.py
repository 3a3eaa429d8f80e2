"""`make bench`'s parts (the benchmarks themselves are too long for `make test`): the data they generate is
readable and in the layout the pipeline reads, the processes they time are the commands a user runs, the embedding
benchmark times both loops, and `python -m pipeline.bench` starts."""
import subprocess
import sys
import tarfile

import pandas as pd
import pytest
import torch

from pipeline.bench import embedding, fixtures, lab, processes, tables
from pipeline.models.loading import ModelLoader, ModelSpec
from pipeline.reports import results
from pipeline.reports import tables as layouts


def test_bench_fixtures_write_quiet_webdatasets(tmp_path, capsys):
    shapes = fixtures.shapes(tmp_path / "shapes", images=24, seed=0)
    named = fixtures.named_classes(tmp_path / "named", ["tench", "goldfish"], per_class=3, seed=0, size=32)
    assert capsys.readouterr() == ("", "")
    for root, samples in ((shapes, 24), (named, 6)):
        shards = sorted((root / "test").glob("*.tar"))
        with_images = sum(1 for shard in shards for name in tarfile.open(shard).getnames()
                          if name.endswith((".png", ".jpg", ".webp")))
        assert shards and with_images == samples
    assert (named / "classnames.txt").read_text().split() == ["tench", "goldfish"]


def test_a_failing_benchmarked_command_says_why_and_timing_needs_a_clean_exit():
    assert processes.seconds([sys.executable, "-c", "pass"]) > 0
    with pytest.raises(processes.BenchFailure, match=r"exited 3:\nboom"):
        processes.seconds([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])


def test_the_sweep_is_one_multirun_over_datasets_and_prompt_sets(tmp_path):
    sets = [processes.Dataset("bench0", tmp_path / "bench0"), processes.Dataset("bench1", tmp_path / "bench1")]
    conf = processes.dataset_configs(tmp_path, sets)
    assert (conf / "dataset" / "bench1.yaml").read_text().startswith("name: bench1\n")
    arguments = processes.pipeline_arguments(processes.Model("ViT-B-32", tmp_path / "ckpt.pt"), sets,
                                             ["dataset", "classname"], processes.Settings(64, 2), conf)
    assert arguments[0] == "-m" and "dataset=bench0,bench1" in arguments and "prompts=dataset,classname" in arguments
    assert processes.pipeline_command(arguments)[1:3] == ["-m", "pipeline"]


def test_the_embedding_benchmark_measures_both_loops_on_the_same_images(tmp_path, tiny_checkpoint):
    loaded = ModelLoader(ModelSpec("tiny", "tiny-clip", str(tiny_checkpoint), "fp32"), torch.device("cpu")).get()
    root = fixtures.named_classes(tmp_path / "embed", ["tench", "goldfish"], per_class=8, seed=4, size=32)
    bare, ours = embedding.compare(loaded, root, batch_size=4, workers=0, repeats=1)
    assert bare.images == ours.images == 16 and bare.per_second > 0 and ours.per_second > 0


def test_the_benchmark_command_describes_its_figures():
    done = subprocess.run([sys.executable, "-m", "pipeline.bench", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "Targets: (1) >= 4x" in done.stdout


def test_the_stress_run_counts_requests_and_runs_as_a_users_machine(tmp_path, monkeypatch):
    (tmp_path / "mlflow-server.log").write_text(
        'INFO: 127.0.0.1:1 - "POST /api/2.0/mlflow/runs/create HTTP/1.1" 200 OK\n'
        'INFO: Application startup complete.\n'
        'INFO: 127.0.0.1:1 - "GET /api/2.0/mlflow/runs/get?run_id=x HTTP/1.1" 200 OK\n')
    assert lab.requests_logged(tmp_path) == 2
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    (tmp_path / "w.env").write_text("MLFLOW_TRACKING_USERNAME=w\nMLFLOW_TRACKING_PASSWORD=p\n")
    env = lab.user_environment(tmp_path / "w.env")
    assert "CI" not in env and "MLFLOW_DISABLE_TELEMETRY" not in env and env["MLFLOW_TRACKING_USERNAME"] == "w"


def test_the_table_benchmarks_files_give_open_clips_table_back(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert tables.write_result_files(tmp_path / "results") == 121 * 38
    rebuilt = layouts.openclip38(results.from_directory(tmp_path / "results"))
    published = pd.read_csv(layouts.PUBLISHED_TABLE, dtype=str, keep_default_na=False)
    key = ["name", "pretrained"]
    both = rebuilt.merge(published, on=key, suffixes=("", " published"))
    assert len(both) == len(published) == 121
    assert both["params (M)"].equals(both["params (M) published"])  # published models: the published figure
    average = layouts.OPENCLIP38_AVERAGE
    assert (both[average].astype(float) - both[f"{average} published"].astype(float)).abs().max() <= 1.0001e-4  # both rounded
    assert tables.aggregate_command(tmp_path, tmp_path / "t.csv")[1:3] == ["-m", "pipeline.aggregate"]


def test_the_store_benchmark_grows_a_store_the_pipeline_reads_like_its_own(tmp_path):
    from pipeline.bench import store as sized
    from pipeline.store import tracking

    store = sized.open_store(tmp_path)
    sized.grow_to(store, 0, 30)
    assert len(tracking.search_all(store, "")) == 30
    [served] = sized.lookup(store, sized._key(12))  # a score run: servable, found by its key
    assert served.data.tags["stage"] == "classify" and served.data.tags["cache_store"] == "true"
    assert len(results.latest_in_store(store)) == 3  # one job run per group of ten
    assert sized.sizes_for(100_000) == [1_000, 10_000, 100_000]


def test_the_cached_suite_benchmark_times_jobs_served_from_their_plan(tmp_path):
    """Benchmark 8 at a small size: every job of its store is served (nothing launched), and the intervals are drawn
    from the replicates it wrote beside each score."""
    import json

    from pipeline.bench import served

    planned, ran, bare, jobs = served.served_suite(tmp_path, ["openclip/RN50__openai", "openclip/ViT-B-32__openai"], 2)
    assert jobs == 4 and min(planned, ran, bare) > 0
    sweeps = sorted((tmp_path / "served" / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2  # the plan's and the run's
    plan = json.loads((sweeps[0] / "plan.json").read_text())
    assert plan["served"] == 4 and plan["launched"] == 0
    results_files = sorted(sweeps[1].glob("*/result.json"))
    assert [json.loads(path.read_text())["served_by"] for path in results_files] == ["plan"] * 4
    table = pd.read_csv(sweeps[1] / "intervals.csv")
    assert len(table) == 2 and table["mean"].str.contains(r"\[").all()  # the mean's interval: from the replicates


def test_the_sweep_benchmark_reads_a_prompt_sets_templates_in_a_process_of_its_own(tmp_path):
    """As `make bench` runs it: a fresh process, where the config's sweeper is this project's."""
    shapes = fixtures.shapes(tmp_path / "bench0", images=8, seed=0)
    code = ("import sys; from pathlib import Path; from pipeline.bench.__main__ import templates_of; "
            "from pipeline.bench.processes import Dataset; "
            "print(len(templates_of('a_photo_of', Dataset('bench0', Path(sys.argv[1])))))")
    done = subprocess.run([sys.executable, "-c", code, str(shapes)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["1"], done.stderr[-2000:]
