"""Tables from score records: layouts, means, missing cells, external result files, and the MLflow aggregate run."""
import json

import pytest

from pipeline.data import catalog
from pipeline.errors import PipelineError
from pipeline.reports import results, tables
from tests.records import PUBLISHED, write_clip_benchmark_jsons


def test_clip_benchmark_json_folder_reproduces_published_averages(tmp_path):
    for _, row in PUBLISHED.iterrows():
        write_clip_benchmark_jsons(tmp_path, row)
    table = tables.openclip38(results.from_directory(tmp_path)).set_index(["name", "pretrained"])
    for _, published in PUBLISHED.iterrows():
        average = float(table.loc[(published["name"], published["pretrained"]), "Average perf. on 38 datasets"])
        assert average == pytest.approx(float(published.iloc[2]), abs=6e-5)


def test_datacomp_jsonl_reproduces_published_average(tmp_path):
    row = PUBLISHED.iloc[1]
    folder = tmp_path / "ViT-B-16"
    folder.mkdir()
    lines = []
    for key in catalog.suite("datacomp38"):
        entry = catalog.lookup(key)
        value = float(row[entry.column])
        lines.append(json.dumps({"key": key, "dataset": entry.column, "metrics": {entry.main_metric: value,
                                                                                 "main_metric": value}}))
    (folder / "eval_results.jsonl").write_text("\n".join(lines) + "\n")
    [ours] = tables.openclip38(results.from_directory(tmp_path)).to_dict("records")
    assert ours["name"] == "ViT-B-16"
    assert float(ours["Average perf. on 38 datasets"]) == pytest.approx(float(row.iloc[2]), abs=6e-5)


def test_unreadable_result_file_is_named(tmp_path):
    write_clip_benchmark_jsons(tmp_path, PUBLISHED.iloc[0])
    broken = tmp_path / "broken.json"
    broken.write_text('{"dataset": "cifar10", "model": "x"')
    with pytest.raises(PipelineError, match="broken.json"):
        results.from_directory(tmp_path)


def test_the_store_is_read_page_after_page_never_truncated(store, monkeypatch):
    """More job runs than one search page: every one reaches the tables (the newest per result wins)."""
    from pipeline.store import tracking

    monkeypatch.setattr(tracking, "SEARCH_PAGE", 4)
    client = store.client
    for number in range(11):
        run = client.create_run(store.experiment_id, tags={"stage": "job", "model": "A", "pretrained": "t",
                                                           "dataset": f"d{number % 9}", "prompts": "p",
                                                           "main_metric": "acc1"})
        client.log_metric(run.info.run_id, "acc1", number / 10)
        client.set_terminated(run.info.run_id, "FINISHED")
    records = {r.dataset: r.metrics["acc1"] for r in results.latest_in_store(store)}
    assert len(records) == 9 and records["d0"] == 0.9 and records["d1"] == 1.0 and records["d8"] == 0.8


def test_a_clip_benchmark_result_keeps_its_language_and_its_multilingual_dataset(tmp_path):
    import json

    from pipeline.reports.results import read_clip_benchmark_json

    path = tmp_path / "xtd10_v1_nllb-clip-base_it_zeroshot_retrieval.json"
    path.write_text(json.dumps({"dataset": "multilingual_mscoco_captions", "model": "nllb-clip-base",
                                "pretrained": "v1", "task": "zeroshot_retrieval", "language": "it",
                                "metrics": {"image_retrieval_recall@1": 0.5, "text_retrieval_recall@1": 0.6}}))
    record = read_clip_benchmark_json(path)
    assert (record.dataset, record.language, record.metrics["mean_recall@1"]) == ("multilingual/xtd10", "it", 0.55)
