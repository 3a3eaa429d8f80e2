"""Multilingual retrieval in the `lines` layout (XTD-10, XTD-200, Flickr30k-200): each language's captions beside
one shared image stage, images missing from the folder left out with their captions, a URL root fetched once,
and the languages a dataset has."""
import tarfile

import pytest
from omegaconf import OmegaConf

from pipeline.data import datasets, reading
from pipeline.errors import PipelineError
from pipeline.jobs.scoring import run_job
from pipeline.store import tracking
from tests import synthetic
from tests.conftest import CONF, compose_config, run_pipeline
from tests.loopback import FakeHub

XTD10 = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / "multilingual" / "xtd10.yaml").lines)
LANGUAGES = list(XTD10["languages"])


def mirror(tmp_path):
    return synthetic.write_lines_retrieval(tmp_path / "mirror" / "xtd10", XTD10, LANGUAGES)


def job(tmp_path, tiny_checkpoint, *overrides):
    return run_job(compose_config("dataset=multilingual/xtd10", f"data_root={tmp_path / 'mirror'}", "num_workers=0",
                                  f"model.pretrained={tiny_checkpoint}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                                  f"tracking.artifact_location={tmp_path}/artifacts", *overrides))


def test_each_language_has_its_captions_and_all_share_the_images(tmp_path, tiny_checkpoint):
    mirror(tmp_path)
    german, japanese = job(tmp_path, tiny_checkpoint, "language=de"), job(tmp_path, tiny_checkpoint, "language=jp")
    assert german.metric == "mean_recall@1" and german.metrics["num_images"] == 11  # the 12th image is missing
    assert german.metrics["ci_low/mean_recall@1"] <= german.value <= german.metrics["ci_high/mean_recall@1"]
    store = tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "clip-tables", str(tmp_path / "artifacts"))
    tags = [store.client.get_run(r.job_run_id).data.tags for r in (german, japanese)]
    assert tags[0]["run.embed_image"] == tags[1]["run.embed_image"] and tags[0]["run.text"] != tags[1]["run.text"]
    assert [t["language"] for t in tags] == ["de", "jp"]
    spec = datasets.DatasetSpec.from_cfg(compose_config("dataset=multilingual/xtd10",
                                                        f"data_root={tmp_path / 'mirror'}").dataset, language="jp")
    captions, owners = reading.lines_captions(spec)
    assert captions[0].startswith("jp: ") and owners == [f"{i:012d}.jpg" for i in range(11)]  # STAIR's file
    # an image lost from the mirror is a new image stage, not captions slid onto the wrong images
    first = datasets.describe(spec).image_identity
    (tmp_path / "mirror" / "xtd10" / "images" / "000000000003.jpg").unlink()
    assert datasets.describe(spec).image_identity != first and len(reading.lines_captions(spec)[0]) == 10
    with pytest.raises(PipelineError, match="dataset multilingual/xtd10 has no captions in language 'ar'; it has de, "
                                            "en, es"):
        job(tmp_path, tiny_checkpoint, "language=ar")


def test_a_url_root_and_its_images_archive_are_fetched_once(tmp_path):
    served = synthetic.write_lines_retrieval(tmp_path / "served" / "xtd", XTD10, ["en"], missing=0)
    with tarfile.open(tmp_path / "served" / "images.tar.gz", "w:gz") as archive:
        archive.add(served / "images", arcname="images")
    with FakeHub({"org/xtd": served, "org/files": tmp_path / "served"}) as hub:
        base = hub.url.replace("127.0.0.1", "localhost")
        spec = datasets.DatasetSpec.from_cfg({"name": "multilingual/xtd10", "task": "zeroshot_retrieval",
                                              "format": "lines", "root": f"{base}/plain/org/xtd", "split": "test",
                                              "main_metric": "mean_recall@1", "lines": XTD10,
                                              "images": f"{base}/plain/org/files/images.tar.gz"},
                                             str(tmp_path / "cache"), language="en")
        info = datasets.describe(spec)
        names, batches = reading.lines_images(spec, lambda image: 0, 4, 0)
        assert len(names) == 12 and sum(len(b.fields["index"]) for b in batches) == 12
        asked = len(hub.requests)
    assert asked == 3  # the index, the English captions, the images' archive
    assert datasets.describe(spec).fingerprint == info.fingerprint and len(reading.lines_captions(spec)[0]) == 12


def test_crossmodal_3600_takes_each_images_first_caption_from_its_json_lines(tmp_path, tiny_checkpoint):
    synthetic.write_crossmodal_stand_in(tmp_path / "mirror" / "crossmodal3600", ["en", "fil", "quz"])
    result = run_job(compose_config("dataset=multilingual/crossmodal3600", f"data_root={tmp_path / 'mirror'}",
                                    "language=fil", "num_workers=0", f"model.pretrained={tiny_checkpoint}",
                                    f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                                    f"tracking.artifact_location={tmp_path}/artifacts"))
    assert result.metrics["num_images"] == 11 and result.metrics["num_captions"] == 11
    spec = datasets.DatasetSpec.from_cfg(compose_config("dataset=multilingual/crossmodal3600",
                                                        f"data_root={tmp_path / 'mirror'}").dataset, language="quz")
    captions, _ = reading.lines_captions(spec)
    assert captions[0] == "quz: a photo of a red circle." and not any("another" in c for c in captions)
    with pytest.raises(PipelineError, match="has no captions in language 'xx'; it has ar, bn, cs, da, de, el, en, es, "
                                            r"fa, fi, fil, fr, \.\.\. \(36 in all\)"):
        run_job(compose_config("dataset=multilingual/crossmodal3600", f"data_root={tmp_path / 'mirror'}",
                               "language=xx", f"model.pretrained={tiny_checkpoint}"))


def test_the_flores_sets_take_clip_benchmarks_200_languages():
    from clip_benchmark.datasets.flores_langs import flores_languages

    from pipeline.data.readers.lines import Layout

    for name in ("xtd200", "flickr30k_200"):
        layout = Layout.from_cfg(OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / "multilingual" / f"{name}.yaml").lines))
        assert layout.languages == tuple(flores_languages) and layout.captions_of("ita_Latn") == "ita_Latn.txt"
        swept = OmegaConf.load(CONF / "suite" / f"{name}.yaml").hydra.sweeper.params.language.split(",")
        assert swept == list(flores_languages)


@pytest.mark.slow
def test_the_xtd10_suite_sweeps_its_languages(tmp_path, tiny_checkpoint):
    mirror(tmp_path)
    done = run_pipeline(tmp_path, "-m", "suite=xtd10", f"data_root={tmp_path / 'mirror'}", "num_workers=0",
                        f"model.pretrained={tiny_checkpoint}")
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    assert said.count("[embed] MISS embed-image") == 1 and said.count("[embed] HIT  embed-image") == 10
    import pandas as pd

    [table] = (tmp_path / "outputs" / "multirun").glob("*/*/table.csv")
    columns = list(pd.read_csv(table).columns)
    wide = pd.read_csv(table.with_name("multilingual.csv"))  # drawn by the sweep itself: languages in columns
    assert [c for c in wide.columns if c.startswith("multilingual/xtd10 image_retrieval_recall@1 ")] == \
        [f"multilingual/xtd10 image_retrieval_recall@1 {language}" for language in ["avg", *LANGUAGES]]
    assert [f"multilingual/xtd10/{language}" for language in LANGUAGES if language != "en"] == \
        [c for c in columns if c.startswith("multilingual/xtd10/")] and "multilingual/xtd10" in columns
