"""A sweep's plan: what it says the sweep will compute is what the sweep then computes; the jobs it serves get the
job runs a launched job writes; claims another worker holds are said as such; `plan=true` touches nothing."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from hydra_plugins.clip_tables.sweeper import held_keys
from pipeline.jobs import plan, served
from pipeline.jobs.scoring import Upstream, resolve
from pipeline.jobs.spec import JobSpec
from pipeline.store import tracking
from pipeline.store.claims import Claims
from tests.conftest import compose_config, run_pipeline

KINDS = {("embed", "image"): "image", ("embed", "text"): "text", ("embed", "template"): "template",
         ("classify", ""): "classify", ("score", ""): "score"}
# Fields of a job run that name who wrote it and when, never what it holds.
WRITER = ("holder_", "mlflow.parentRunId", "served_by", "claim_")


def sweep(workdir: Path, assets: list[str], prompts: str, *extra: str):
    done = run_pipeline(workdir, "-m", *assets, f"prompts={prompts}", *extra)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def store_of(workdir: Path) -> tracking.TrackingStore:
    return tracking.connect(f"sqlite:///{workdir}/outputs/mlflow.db", "clip-tables")


def computed(store: tracking.TrackingStore) -> Counter:
    runs = tracking.search_all(store, "attributes.status = 'FINISHED'")
    return Counter(KINDS[(run.data.tags["stage"], run.data.tags.get("modality", ""))] for run in runs
                   if (run.data.tags.get("stage"), run.data.tags.get("modality", "")) in KINDS)


def last_plan(workdir: Path) -> dict:
    [path] = sorted((workdir / "outputs" / "multirun").glob("*/*/plan.json"))[-1:]
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def assets(shapes_root, tiny_checkpoint) -> list[str]:
    return ["model=tiny", f"model.pretrained={tiny_checkpoint}", f"dataset.root={shapes_root}", "num_workers=0"]


@pytest.mark.slow
def test_the_plan_counts_what_the_sweep_then_computes_and_serves_the_rest(tmp_path, assets):
    sweep(tmp_path, assets, "classname")
    store = store_of(tmp_path)
    before, runs_before = computed(store), len(tracking.search_all(store, "", view="ALL"))
    planned = sweep(tmp_path, assets, "classname,dataset,a_photo_of", "plan=true")
    said = last_plan(tmp_path)
    assert "nothing launched (plan=true)" in planned.stdout
    assert len(tracking.search_all(store, "", view="ALL")) == runs_before  # a plan writes nothing to the store
    assert (said["jobs"], said["served"], said["launched"]) == (3, 1, 2)

    sweep(tmp_path, assets, "classname,dataset,a_photo_of")
    new = computed(store) - before
    to_compute = {kind: counts["to compute"] for kind, counts in said["stages"].items() if counts["to compute"]}
    assert dict(new) == to_compute, (dict(new), said["stages"])

    jobs = tracking.search_all(store, "tags.stage = 'job' and tags.prompts = 'classname'", ["attributes.start_time"])
    launched, from_plan = jobs[0], jobs[1]
    assert from_plan.data.tags[served.SERVED_TAG] == "plan" and served.SERVED_TAG not in launched.data.tags
    for field in ("tags", "params", "metrics"):
        ours, theirs = ({k: v for k, v in getattr(run.data, field).items() if not k.startswith(WRITER)}
                        for run in (from_plan, launched))
        assert ours == theirs, field
    assert from_plan.info.run_name == launched.info.run_name and from_plan.info.status == "FINISHED"
    assert [i.dataset.digest for i in from_plan.inputs.dataset_inputs] == [
        i.dataset.digest for i in launched.inputs.dataset_inputs]


@pytest.mark.slow
def test_a_plan_says_which_keys_another_worker_is_computing(tmp_path, assets):
    sweep(tmp_path, assets, "classname")
    store = store_of(tmp_path)
    spec = JobSpec.from_cfg(compose_config(*assets, "prompts=dataset", f"tracking.uri={store.uri}"))
    keys = Upstream(resolve(spec), None).stage_keys()
    with Claims(store, timeout_s=300).hold([keys["score"], keys["classify"]], "g", "another worker"):
        assert {keys["score"], keys["classify"]} <= held_keys(store)
        sweep(tmp_path, assets, "dataset", "plan=true")
    said = last_plan(tmp_path)["stages"]
    assert said["score"]["held by another worker"] == 1 and said["classify"]["held by another worker"] == 1
    assert said["image"]["cached"] == 1 and said["text"]["to compute"] == 1


def test_a_plan_of_a_store_that_does_not_exist_creates_none(tmp_path, assets):
    done = sweep(tmp_path, assets, "classname,dataset", "plan=true")
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    said = last_plan(tmp_path)
    assert said["served"] == 0 and said["stages"]["score"]["to compute"] == 2
    assert "Plan: 2 job(s); 0 served from the store as they are, 2 to launch" in done.stdout


def test_stage_kinds_and_what_a_miss_asks_for():
    keys = {"embed_image": "i", "text": "t", "template:a {c}": "a", "classify": "c", "score": "s"}
    assert plan.asked(keys, cached={}, held=set()) == ["embed_image", "text", "template:a {c}", "classify", "score"]
    assert plan.asked(keys, cached={"t": 1}, held=set()) == ["embed_image", "text", "classify", "score"]
    assert [plan.kind_of(stage) for stage in ("embed_train", "template:x", "classify")] == [
        "image", "template", "classify"]
