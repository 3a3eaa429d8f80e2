"""What a scoring job and an explain job share: the model resolved from the typed spec (device, precision recipe,
labels) and the open job (its run, FINISHED once the block completes, and the stage context its stages share)."""
from __future__ import annotations

from pipeline.jobs.skeleton import open_job, resolve_model
from pipeline.jobs.spec import JobSpec
from tests.conftest import compose_config


def test_a_jobs_model_is_resolved_once_with_its_labels(tiny_checkpoint):
    spec = JobSpec.from_cfg(compose_config(f"model.pretrained={tiny_checkpoint}", "device=cpu", "protocol=datacomp"))
    model = resolve_model(spec, spec.task.name)
    assert model.device == "cpu" and model.recipe.image == model.recipe.text == model.recipe.logits == "fp32"
    assert model.tags["model"] == "tiny-clip" and model.tags["pretrained"] == "tiny-clip.pt"
    assert model.labels["precision.logits"] == "fp32" and "lib.torch" in model.labels
    assert model.loader.spec.fingerprint["weights"].startswith("sha256:")


def test_an_open_job_is_one_run_whose_stages_share_its_context(tmp_path, tiny_checkpoint):
    spec = JobSpec.from_cfg(compose_config(f"model.pretrained={tiny_checkpoint}",
                                           f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                                           f"tracking.artifact_location={tmp_path}/artifacts"))
    labels = {"model": "tiny-clip", "model_name": "tiny", "dataset": "shapes", "prompts": "dataset"}
    with open_job(spec, labels, {"dataset": "shapes"}, None) as opened:
        assert opened.stages.tags == {"dataset": "shapes"} and opened.stages.params is spec.params
        assert opened.stages.cache.parent_run_id == opened.run_id
        assert opened.store.client.get_run(opened.run_id).info.status == "RUNNING"
    run = opened.store.client.get_run(opened.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "job" and run.data.params["batch_size"] == "64"
