"""End-to-end: real Hydra multiruns of `python -m pipeline` in a subprocess, against a real SQLite MLflow store."""
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipeline.data import catalog
from pipeline.data.datasets import FINGERPRINT_HEAD_BYTES
from pipeline.store import tracking
from tests import synthetic
from tests.conftest import CONF, asset_overrides, run_pipeline

pytestmark = pytest.mark.slow

PROMPTS = "prompts=classname,a_photo_of,dataset"


def open_store(workdir: Path) -> tracking.TrackingStore:
    return tracking.connect(f"sqlite:///{workdir}/outputs/mlflow.db", "clip-tables")


def runs(workdir: Path, status: str = "FINISHED"):
    if not (workdir / "outputs" / "mlflow.db").exists():
        return []
    store = open_store(workdir)
    return store.client.search_runs([store.experiment_id], f"attributes.status = '{status}'", max_results=1000)


def stage_counts(workdir: Path) -> Counter:
    return Counter((r.data.tags["stage"], r.data.tags.get("modality", "")) for r in runs(workdir))


def sweep_dirs(workdir: Path) -> list[Path]:
    return sorted(p.parent for p in (workdir / "outputs" / "multirun").glob("*/*/table.csv"))


def assert_ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture
def assets(shapes_root, tiny_checkpoint) -> list[str]:
    return asset_overrides(shapes_root, tiny_checkpoint)


def assert_intervals_are_the_stored_outcomes_resampled(workdir: Path, score_run) -> None:
    """Every result of the sweep is in results.csv with an interval around its value; the score run's acc1
    interval is a direct resampling of its stored outcomes; job runs log their headline metric's bounds."""
    import numpy as np

    from pipeline.stages.score import uncertainty

    results = pd.read_csv(sweep_dirs(workdir)[0] / "results.csv")
    acc1 = results[results["metric"] == "acc1"]
    assert sorted(acc1["prompts"]) == ["a_photo_of", "classname", "dataset"] and (acc1["n"] == 480).all()
    assert ((acc1["ci_low"] <= acc1["value"]) & (acc1["value"] <= acc1["ci_high"]) & (acc1["ci_low"] < acc1["ci_high"])).all()
    store = open_store(workdir)
    correct = np.load(store.client.download_artifacts(score_run.info.run_id, "correct1.npy", str(workdir)))
    rng = np.random.default_rng(uncertainty.dataset_seed("shapes"))
    direct = np.percentile([correct[rng.integers(0, len(correct), len(correct))].mean() for _ in range(1000)],
                           [2.5, 97.5])
    metrics = score_run.data.metrics
    assert (metrics["ci_low/acc1"], metrics["ci_high/acc1"]) == pytest.approx(tuple(direct))
    job = next(r for r in runs(workdir) if r.data.tags["stage"] == "job")
    assert job.data.metrics["ci_low"] <= job.data.metrics["acc1"] <= job.data.metrics["ci_high"]


def assert_runs_nest_under_the_sweep(workdir: Path) -> None:
    """Job runs and the aggregate run are children of the sweep's run; every stage run a job computed is a child
    of that job run, and the job links all its stage runs by tags; job runs record the dataset they read."""
    found = runs(workdir)
    by_stage = {stage: [r for r in found if r.data.tags["stage"] == stage] for stage in ("sweep", "job", "aggregate")}
    [sweep_run] = by_stage["sweep"]
    parent = lambda r: r.data.tags.get("mlflow.parentRunId")
    assert {parent(r) for r in by_stage["job"] + by_stage["aggregate"]} == {sweep_run.info.run_id}
    jobs = {r.info.run_id for r in by_stage["job"]}
    stage_runs = [r for r in found if r.data.tags["stage"] in ("embed", "classify", "score")]
    assert all(parent(r) in jobs for r in stage_runs)
    linked = {v for job in by_stage["job"] for k, v in job.data.tags.items() if k.startswith("run.")}
    assert {r.info.run_id for r in stage_runs if r.data.tags.get("modality") != "template"} <= linked
    store = open_store(workdir)
    assert store.client.get_experiment(store.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    for job in by_stage["job"]:
        [used] = job.inputs.dataset_inputs
        assert used.dataset.name == "shapes" and used.dataset.digest
        assert {(t.key, t.value) for t in used.tags} == {("mlflow.data.context", "test")}


def assert_reports_of_the_sweep(workdir: Path) -> None:
    """The sweep folder holds the heatmap, the prompt-engineering gains and ensembling curves, and report.html;
    the aggregate run has them all as artifacts. The ensembling curve of `dataset` (4 templates) ends at the
    job's own accuracy: it averages the same cached embeddings."""
    folder = sweep_dirs(workdir)[0]
    gains = pd.read_csv(folder / "prompt_gains.csv")
    table = pd.read_csv(folder / "table.csv").set_index("prompts")["shapes"]
    assert sorted(gains["prompts"]) == ["a_photo_of", "dataset"]
    for _, row in gains.iterrows():
        assert row["gain"] == pytest.approx(table[row["prompts"]] - table["classname"], abs=1e-4)
        assert row["ci_low"] <= row["gain"] <= row["ci_high"]
    curves = pd.read_csv(folder / "ensembling.csv")
    assert set(curves["prompts"]) == {"dataset"} and list(curves["templates"]) == [1, 2, 3, 4]
    assert curves["listed_order"].iloc[-1] == pytest.approx(table["dataset"], abs=1.5 / 480)  # at most one sample
    page = (folder / "report.html").read_text()
    for section in ("Results with 95 % intervals", "Prompt engineering", "Job runs"):
        assert f"<h2>{section}</h2>" in page
    assert page.count("data:image/png;base64,") >= 4  # intervals, heatmap, gains, ensembling
    store = open_store(workdir)
    [aggregate] = [r for r in runs(workdir) if r.data.tags["stage"] == "aggregate"]
    logged = {f.path for f in store.client.list_artifacts(aggregate.info.run_id)}
    assert {"heatmap.png", "prompt_gains.png", "ensembling.png", "report.html", "results.csv"} <= logged
    assert f"#/experiments/{store.experiment_id}/runs/{aggregate.info.run_id}" in page


def test_sweep_encodes_images_once_and_repeats_from_cache(tmp_path, assets):
    done = run_pipeline(tmp_path, "-m", PROMPTS, *assets)
    assert_ok(done)
    # The tiny model has no published counterpart: the sweep says so and goes on.
    assert "none of the 3 results has a published counterpart in openclip" in done.stdout + done.stderr
    first = stage_counts(tmp_path)
    # 5 distinct templates: `{c}`, and the dataset's 4, of which `a photo of a {c}.` is a_photo_of's one
    assert first == Counter({("embed", "image"): 1, ("embed", "template"): 5, ("embed", "text"): 3, ("classify", ""): 3,
                             ("score", ""): 3, ("job", ""): 3, ("aggregate", ""): 1, ("sweep", ""): 1})
    assert_runs_nest_under_the_sweep(tmp_path)
    assert_reports_of_the_sweep(tmp_path)

    table = pd.read_csv(sweep_dirs(tmp_path)[0] / "table.csv")
    assert sorted(table["prompts"]) == ["a_photo_of", "classname", "dataset"]
    assert table["shapes"].max() >= 0.8 and (table["mean"] == table["shapes"]).all()

    score_run = next(r for r in runs(tmp_path) if r.data.tags["stage"] == "score")
    for tag in ("stage", "model", "pretrained", "dataset", "prompts", "cache_key"):
        assert score_run.data.tags[tag]
    assert score_run.data.tags["model"] == "tiny-clip" and score_run.data.params["model.arch"] == "tiny-clip"
    assert {"acc1", "acc5", "mean_per_class_recall", "acc1_adjusted"} <= set(score_run.data.metrics)
    assert_intervals_are_the_stored_outcomes_resampled(tmp_path, score_run)

    repeat = run_pipeline(tmp_path, "-m", PROMPTS, *assets)
    assert_ok(repeat)
    said = repeat.stderr + repeat.stdout
    assert "MISS" not in said and "Plan: 3 job(s); 3 served from the store as they are, 0 to launch" in said
    assert stage_counts(tmp_path) == first + Counter({("job", ""): 3, ("aggregate", ""): 1, ("sweep", ""): 1})

    # A different headline metric reuses the logits and the scores; only the table changes.
    other_metric = run_pipeline(tmp_path, "-m", PROMPTS, "metric=acc5", *assets)
    assert_ok(other_metric)
    assert stage_counts(tmp_path) == first + Counter({("job", ""): 6, ("aggregate", ""): 2, ("sweep", ""): 2})
    assert "### acc5" in other_metric.stdout

    rebuilt = run_pipeline(tmp_path, "metric=mean_per_class_recall", module="pipeline.aggregate")
    assert_ok(rebuilt)
    rebuilt_table = pd.read_csv(tmp_path / "outputs" / "tables" / "table.csv")
    assert len(rebuilt_table) == 3 and rebuilt_table["shapes"].between(0, 1).all()


def test_prompt_sets_with_coinciding_templates_each_get_their_labelled_row(tmp_path, tiny_checkpoint):
    """On a dataset without a hint `clip_hints` is `a_photo_of`, and `clip_benchmark` falls back to the 80 templates
    of `openai_imagenet`: equal keys share stage runs, but every prompt set still gets its own row."""
    data = synthetic.write_wds_classification(tmp_path / "small_shapes", per_class=3)
    names = ["a_photo_of", "clip_hints", "openai_imagenet", "clip_benchmark"]
    assert_ok(run_pipeline(tmp_path, "-m", f"prompts={','.join(names)}", f"dataset.root={data}",
                           f"model.pretrained={tiny_checkpoint}", "num_workers=0"))
    assert stage_counts(tmp_path)[("score", "")] == 2 and stage_counts(tmp_path)[("job", "")] == 4
    table = pd.read_csv(sweep_dirs(tmp_path)[0] / "table.csv").set_index("prompts")
    assert sorted(table.index) == sorted(names) and table["shapes"].notna().all()
    assert table.loc["clip_hints", "shapes"] == table.loc["a_photo_of", "shapes"]
    assert table.loc["clip_benchmark", "shapes"] == table.loc["openai_imagenet", "shapes"]

    rebuilt = run_pipeline(tmp_path, "prompts=clip_hints", module="pipeline.aggregate")  # what `make table` runs
    assert_ok(rebuilt)
    [row] = pd.read_csv(tmp_path / "outputs" / "tables" / "table.csv").to_dict("records")
    assert row["prompts"] == "clip_hints" and row["shapes"] == table.loc["clip_hints", "shapes"]


def test_corrupted_artifact_is_detected_and_recomputed(tmp_path, assets):
    assert_ok(run_pipeline(tmp_path, "-m", "prompts=classname", *assets))
    image_run = next(r for r in runs(tmp_path) if r.data.tags.get("modality") == "image")
    features = Path(image_run.info.artifact_uri.removeprefix("file://")) / "image_features.npy"
    raw = bytearray(features.read_bytes())
    raw[-8:] = b"\x7f" * 8
    features.write_bytes(bytes(raw))

    # classname's score is served as it is (score first: nothing upstream is read); a_photo_of needs the features
    again = run_pipeline(tmp_path, "-m", "prompts=classname,a_photo_of", *assets)
    assert_ok(again)
    assert "corrupt" in again.stderr + again.stdout
    image_runs = [r for r in runs(tmp_path) if r.data.tags.get("modality") == "image"]
    assert len(image_runs) == 2
    assert open_store(tmp_path).client.get_run(image_run.info.run_id).data.tags["cache_store"] == "false"
    first, second = (pd.read_csv(d / "table.csv").set_index("prompts") for d in sweep_dirs(tmp_path))
    assert first.loc["classname", "shapes"] == second.loc["classname", "shapes"]
    assert second.loc["a_photo_of", "shapes"] > 0.5


def corrupt_an_image_past_the_fingerprinted_head(shard: Path) -> str:
    """Overwrite one image's bytes in place: same size, same head, so the cache key is unchanged; returns its key."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".png") and m.offset_data > FINGERPRINT_HEAD_BYTES)
    with open(shard, "r+b") as handle:
        handle.seek(member.offset_data)
        handle.write(b"\0" * member.size)
    return member.name.removesuffix(".png")


def test_failed_stage_is_not_served_on_the_next_run(tmp_path, shapes_root, tiny_checkpoint):
    data = tmp_path / "shapes"
    shutil.copytree(shapes_root, data)
    shard = data / "test" / "1.tar"
    original = shard.read_bytes()
    key = corrupt_an_image_past_the_fingerprinted_head(shard)
    overrides = ["-m", "prompts=classname", f"dataset.root={data}", f"model.pretrained={tiny_checkpoint}"]

    failed = run_pipeline(tmp_path, *overrides)
    assert failed.returncode != 0
    last_line = failed.stderr.strip().splitlines()[-1]
    assert "corrupt or truncated" in last_line and f"sample {key} in shard 1.tar" in last_line
    assert "Traceback" not in failed.stderr + failed.stdout  # it is in the job's log file instead
    assert "Traceback" in next((tmp_path / "outputs" / "multirun").rglob("*.log")).read_text()
    # the image stage's run, the job's run and the sweep's run all end FAILED; nothing is FINISHED
    failed_runs = {r.data.tags["stage"]: r for r in runs(tmp_path, "FAILED")}
    assert sorted(failed_runs) == ["embed", "job", "sweep"]
    failed_run = failed_runs["embed"]
    assert failed_run.data.tags["modality"] == "image"
    assert failed_run.data.tags["mlflow.parentRunId"] == failed_runs["job"].info.run_id
    assert runs(tmp_path) == []

    skipping = run_pipeline(tmp_path, *overrides, "dataset.skip_corrupt=true")
    assert_ok(skipping)
    [skipped_run] = [r for r in runs(tmp_path) if r.data.tags.get("modality") == "image"]
    assert skipped_run.data.metrics["skipped_samples"] == 1.0 and "skipped 1 undecodable" in skipping.stdout
    assert skipped_run.data.tags["cache_key"] != failed_run.data.tags["cache_key"]  # never served to a non-skipping run

    shard.write_bytes(original)
    fixed = run_pipeline(tmp_path, *overrides)
    assert_ok(fixed)
    assert any("[embed] MISS" in line and line.endswith("key=" + failed_run.data.tags["cache_key"])
               for line in (fixed.stderr + fixed.stdout).splitlines())
    [image_run] = [r for r in runs(tmp_path) if r.data.tags.get("modality") == "image"
                   and r.info.run_id != skipped_run.info.run_id]
    assert image_run.data.tags["cache_key"] == failed_run.data.tags["cache_key"]


def test_suite_of_stand_ins_for_every_task_type_gives_the_openclip38_table(tmp_path, tiny_checkpoint):
    """`suite=datacomp38 data_root=MIRROR` runs all 38 datasets (classification, WILDS, fairness, retrieval,
    WinoGAViL) from a local mirror in the public copies' layout, and writes open_clip's table."""
    keys = catalog.suite("datacomp38")
    specs = [OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / f"{key}.yaml")) for key in keys]
    mirror = synthetic.write_mirror(tmp_path / "mirror", specs)
    proc = run_pipeline(tmp_path, "-m", "suite=datacomp38", f"data_root={mirror}", f"model.pretrained={tiny_checkpoint}",
                        "num_workers=0")
    assert_ok(proc)
    [sweep] = [p.parent for p in (tmp_path / "outputs" / "multirun").glob("*/*/openclip38.csv")]
    table = pd.read_csv(sweep / "openclip38.csv", dtype=str)
    assert len(table) == 1 and table.loc[0, "name"] == "tiny-clip"
    cells = table.loc[0, [catalog.lookup(k).column for k in keys]].astype(float)
    assert cells.notna().all() and cells.between(0, 1).all()
    assert float(table.loc[0, "Average perf. on 38 datasets"]) == pytest.approx(cells.mean(), abs=6e-5)
    assert (cells > 0.3).all(), cells.to_dict()  # the tiny model is far above chance on every stand-in
    tasks = Counter(r.data.tags["task"] for r in runs(tmp_path) if r.data.tags["stage"] == "score")
    assert tasks == Counter({"zeroshot_classification": 35, "zeroshot_retrieval": 2, "winogavil": 1})


@pytest.mark.parametrize("overrides, message", [
    (["model=nope"], "Error: model=nope is not an option of model/"),
    (["dataset.root=/no/such/shapes"], "dataset root /no/such/shapes does not exist"),
    (["prompts=a_photo_of", "prompts.templates=[a photo]"], "template 'a photo' has no {c} placeholder"),
    (["dataset.root='pipe:touch MARKER'", "+single_run=true"], "dataset.root='pipe:touch MARKER' is not usable"),
    (['''dataset.root="http://127.0.0.1:9/a';touch MARKER;echo '"'''], "cannot fetch http://127.0.0.1:9/a';touch"),
])
def test_bad_input_fails_clearly_and_leaves_no_finished_run(tmp_path, assets, overrides, message):
    single = "+single_run=true" in overrides  # the same in a single run as in a multirun
    overrides = [o for o in overrides if o != "+single_run=true"]
    proc = run_pipeline(tmp_path, *([] if single else ["-m"]), *assets, *overrides)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    if single or "placeholder" in message or "option" in message:  # our own errors: their one line ends stderr
        assert message in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "MARKER").exists()
    assert runs(tmp_path) == []


def test_a_sweep_over_a_training_runs_checkpoints_draws_its_curve(tmp_path, shapes_root, tiny_checkpoint):
    """The bundled tiny model's own training run: its checkpoints every 300 steps, read in step order from their
    file names, each a point of the curve; the sweep's run is FINISHED with its aggregate run under it."""
    from tests.conftest import TRAINING_RUN

    checkpoints = [TRAINING_RUN / "step_300.pt", TRAINING_RUN / "step_1500.pt"]
    sweep = run_pipeline(tmp_path, "-m", "prompts=dataset", f"dataset.root={shapes_root}",
                         f"model.pretrained={','.join(map(str, reversed(checkpoints)))}")
    assert_ok(sweep)
    folder = sweep_dirs(tmp_path)[0]
    curve = pd.read_csv(folder / "training_curves.csv")
    assert list(curve["step"]) == [300, 1500]
    assert list(curve["checkpoint"]) == ["tiny-clip-run/step_300.pt", "tiny-clip-run/step_1500.pt"]
    assert set(curve["checkpoint_run"]) == {"tiny-clip-run"}
    assert curve["shapes"].iloc[1] > curve["shapes"].iloc[0]  # training helps
    assert "<h2>Over training</h2>" in (folder / "report.html").read_text()
    assert (folder / "training_curves.png").stat().st_size > 1000
