"""One job in process: effective precision in the keys, job runs labelled by the request, the source of the data."""
import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.jobs.scoring import run_job
from pipeline.models.loading import library_versions
from pipeline.reports import results, tables
from pipeline.store import tracking
from tests import synthetic
from tests.conftest import compose_config


def job_config(tmp_path: Path, tiny_checkpoint: Path, *overrides: str):
    return compose_config(f"model.pretrained={tiny_checkpoint}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                          f"tracking.artifact_location={tmp_path}/artifacts", "num_workers=0", "device=cpu", *overrides)


def all_runs(tmp_path: Path):
    store = tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "clip-tables")
    return store, store.client.search_runs([store.experiment_id], "attributes.status = 'FINISHED'", max_results=1000)


@pytest.fixture
def small_shapes(tmp_path: Path) -> Path:
    return synthetic.write_wds_classification(tmp_path / "small_shapes", per_class=3)


def test_protocols_share_image_features_where_their_precision_agrees(tmp_path, tiny_checkpoint, small_shapes):
    """On CPU `datacomp` (torch.cuda.amp.autocast: a no-op there) and `fp32` compute the same fp32 features;
    `clip_benchmark` autocasts to bfloat16, so it gets its own image, text and classify runs."""
    values = {}
    for protocol in ("datacomp", "fp32", "clip_benchmark"):
        cfg = job_config(tmp_path, tiny_checkpoint, f"protocol={protocol}", f"dataset.root={small_shapes}")
        values[protocol] = run_job(cfg).value
    store, runs = all_runs(tmp_path)
    image_runs = [r for r in runs if r.data.tags.get("modality") == "image"]
    assert sorted(r.data.tags["precision"] for r in image_runs) == ["amp-bf16", "fp32"]
    assert len({r.data.tags["cache_key"] for r in image_runs}) == 2
    assert Counter(r.data.tags["stage"] for r in runs)["classify"] == 2
    jobs = {r.data.tags["protocol"]: r for r in runs if r.data.tags["stage"] == "job"}
    assert set(jobs) == {"datacomp", "fp32", "clip_benchmark"}
    assert jobs["datacomp"].data.tags["run.embed_image"] == jobs["fp32"].data.tags["run.embed_image"]
    assert jobs["clip_benchmark"].data.tags["run.embed_image"] != jobs["fp32"].data.tags["run.embed_image"]
    assert (jobs["clip_benchmark"].data.tags["precision.image"], jobs["clip_benchmark"].data.tags["precision.logits"]) \
        == ("amp-bf16", "amp-bf16")
    assert values["datacomp"] == values["fp32"]
    for name, version in library_versions().items():
        assert jobs["fp32"].data.tags[f"lib.{name}"] == version


def test_job_run_carries_the_request_and_the_stage_runs_it_used(tmp_path, tiny_checkpoint, small_shapes):
    cfg = job_config(tmp_path, tiny_checkpoint, f"dataset.root={small_shapes}", "prompts=a_photo_of")
    result = run_job(cfg)
    store, runs = all_runs(tmp_path)
    [job] = [r for r in runs if r.data.tags["stage"] == "job"]
    assert job.info.run_id == result.job_run_id and not store.client.list_artifacts(job.info.run_id)
    tags = job.data.tags
    assert (tags["model"], tags["dataset"], tags["prompts"], tags["source"], tags["protocol"]) == \
        ("tiny-clip", "shapes", "a_photo_of", "local", "datacomp")
    stage_of = {r.info.run_id: (r.data.tags["stage"], r.data.tags.get("modality", "")) for r in runs}
    assert [stage_of[tags[f"run.{s}"]] for s in ("embed_image", "text", "classify", "score")] == \
        [("embed", "image"), ("embed", "text"), ("classify", ""), ("score", "")]
    assert job.data.metrics["acc1"] == result.value and tags["metric"] == "acc1"


def test_results_are_keyed_by_the_copy_of_the_data(tmp_path, tiny_checkpoint):
    """The same images as DataComp's copy and as CLIP_benchmark's: one image pass, two labelled results, and
    open_clip's table takes DataComp's."""
    mirror = tmp_path / "mirror"
    synthetic.write_wds_classification(mirror / "wds_cars_test", per_class=2)
    shutil.copytree(mirror / "wds_cars_test", mirror / "wds_cars")
    for source in ("datacomp", "clip_benchmark"):
        run_job(job_config(tmp_path, tiny_checkpoint, "dataset=cars", f"data_root={mirror}", f"dataset.source={source}"))
    store, runs = all_runs(tmp_path)
    assert Counter(r.data.tags["stage"] for r in runs)["score"] == 1  # identical content: computed once
    records = results.latest_in_store(store)
    assert sorted(r.source for r in records) == ["clip_benchmark", "datacomp"]
    [eligible] = [r for r in records if tables.openclip38_eligible(r)]
    assert eligible.source == "datacomp"


def test_openai_weights_need_the_quickgelu_architecture(tmp_path, small_shapes):
    cfg = compose_config("model=vit_b_32_openai", "model.arch=ViT-B-32", f"dataset.root={small_shapes}",
                         f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(PipelineError, match="use model.arch=ViT-B-32-quickgelu"):
        run_job(cfg)
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run was created


def test_forced_fp32_is_labelled_fp32_and_template_files_by_name(tmp_path, tiny_checkpoint, small_shapes):
    """`model.precision=fp32` computed everything in fp32: its results are `fp32`'s, never DataComp's protocol's;
    two template files are two prompt sets."""
    templates = tmp_path / "sketches.txt"
    templates.write_text("a sketch of a {c}.\n")
    run_job(job_config(tmp_path, tiny_checkpoint, f"dataset.root={small_shapes}", "model.precision=fp32",
                       "prompts=file", f"prompts.path={templates}"))
    store, runs = all_runs(tmp_path)
    [job] = [r for r in runs if r.data.tags["stage"] == "job"]
    assert (job.data.tags["protocol"], job.data.tags["prompts"]) == ("fp32", "file:sketches")


def test_a_fully_cached_job_loads_no_model_and_downloads_no_upstream_artifact(tmp_path, tiny_checkpoint, small_shapes,
                                                                               monkeypatch):
    """Score first: every key follows from fingerprints and configs, so a served score needs nothing upstream."""
    from pipeline.models import loading
    from pipeline.store import artifacts

    cfg = job_config(tmp_path, tiny_checkpoint, f"dataset.root={small_shapes}", "prompts=a_photo_of")
    first = run_job(cfg)
    reads: list[str] = []
    real_read = artifacts.verified_folder

    def recording(run, *args, **kwargs):
        reads.append(artifacts.Location.of(run).run_id)
        return real_read(run, *args, **kwargs)

    def no_loading(spec, device):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(artifacts, "verified_folder", recording)
    monkeypatch.setattr(loading, "load_model", no_loading)
    monkeypatch.setattr(loading.LOADED_MODELS, "key", None)  # nothing loaded in this process any more
    again = run_job(cfg)
    assert again.value == first.value and again.score_run_id == first.score_run_id
    assert reads and set(reads) == {first.score_run_id}  # the score's own metrics only
    store, runs = all_runs(tmp_path)
    jobs = [r for r in runs if r.data.tags["stage"] == "job"]
    assert len(jobs) == 2 and jobs[0].data.tags["run.embed_image"] == jobs[1].data.tags["run.embed_image"]


SERVED_JOB_NEVER_IMPORTS = ("torch", "torchvision", "open_clip", "sklearn", "webdataset", "clip_benchmark", "datasets",
                            "pipeline.data.readers.wds", "pipeline.data.readers.hf", "pipeline.stages.embed.images")


def test_a_fully_cached_job_process_imports_none_of_the_computing_libraries(tmp_path, tiny_checkpoint, small_shapes):
    """`python -m pipeline` once cold, then again with every stage served: the second process's modules, as it
    exits, hold no deep-learning library, no metric library and no dataset reader."""
    from pipeline.bench.processes import recording_command
    from tests.conftest import run_pipeline

    arguments = [f"model.pretrained={tiny_checkpoint}", f"dataset.root={small_shapes}", "prompts=a_photo_of"]
    cold = run_pipeline(tmp_path, *arguments)
    assert cold.returncode == 0, cold.stderr[-2000:]
    record = tmp_path / "modules.json"
    served = subprocess.run(recording_command(arguments, record), cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "CLIP_TABLES_OUTPUTS": str(tmp_path / "outputs")}, timeout=600)
    assert served.returncode == 0 and "MISS" not in served.stdout + served.stderr, served.stderr[-2000:]
    imported = set(json.loads(record.read_text()))
    assert "pipeline.jobs.scoring" in imported  # the record is the job's own
    assert not [name for name in SERVED_JOB_NEVER_IMPORTS if name in imported]
