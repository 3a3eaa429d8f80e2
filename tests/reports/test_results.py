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


def probe_file(tmp_path, name: str, **metrics) -> "results.ScoreRecord":
    """A `clip_benchmark eval --task linear_probe` result as its cli.py writes it (metrics/linear_probe.py's keys)."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"dataset": "wds/vtab/cifar10", "model": "ViT-B-32", "pretrained": "openai",
                                "task": "linear_probe", "language": "en",
                                "metrics": {"lp_acc1": 0.95, "lp_acc5": 0.99, "lp_mean_per_class_recall": 0.94,
                                            "weight_decay": 0.001, "epochs": 10, "normalized": True, **metrics}}))
    return results.read_clip_benchmark_json(path)


def test_clip_benchmarks_probe_is_read_with_its_shots_seed_and_metrics(tmp_path):
    full = probe_file(tmp_path, "full", seed=0, fewshot_k=-1)
    assert (full.head, full.k_shot, full.seed, full.features) == ("linear_probe", "all", "0", "clip_benchmark")
    assert (full.dataset, full.main_metric, full.value("main")) == ("vtab/cifar10", "acc1", 0.95)
    assert full.metrics["mean_per_class_recall"] == 0.94 and full.metrics["lp_acc1"] == 0.95  # both names
    assert full.head_label == "linear_probe (clip_benchmark)" and full.is_clip_benchmark_probe
    unsaid = probe_file(tmp_path, "unsaid")  # no shot count: CLIP_benchmark's default, the whole train split
    assert (unsaid.k_shot, unsaid.seed) == ("all", "-")
    few = probe_file(tmp_path, "few", seed=2, fewshot_k=4)
    assert (few.k_shot, few.seed, few.head_label) == ("4", "2", "linear_probe 4-shot (clip_benchmark)")
    assert len({full.identity, few.identity}) == 2 and not tables.openclip38_eligible(full)


def test_a_kinetics700_result_has_the_papers_mean_of_top_1_and_top_5(tmp_path):
    path = tmp_path / "kinetics700.json"
    path.write_text(json.dumps({"dataset": "kinetics700", "model": "ViT-B-32", "pretrained": "openai",
                                "task": "zeroshot_classification", "metrics": {"acc1": 0.4, "acc5": 0.7}}))
    assert results.read_clip_benchmark_json(path).metrics["mean_top1_top5"] == pytest.approx(0.55)
