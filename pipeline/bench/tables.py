"""Benchmark 5: open_clip's 121-model table rebuilt from result files (`python -m pipeline.aggregate results_dir=...
layout=openclip38`) against reading the same files with json and pandas alone, both as whole processes."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.bench.processes import PYTHON
from pipeline.data import catalog
from pipeline.reports.tables import PUBLISHED_TABLE

# The reference: start Python, import pandas, parse every JSON file below a folder into one DataFrame.
_READING = ("import json, pathlib, sys\n"
            "import pandas as pd\n"
            "rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).rglob('*.json'))]\n"
            "print(len(pd.json_normalize(rows)))\n")


def write_result_files(folder: Path) -> int:
    """One `clip_benchmark eval` JSON per published model and datacomp38 dataset, with the published values."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(PUBLISHED_TABLE, dtype=str, keep_default_na=False)
    written = 0
    for number, row in table.iterrows():
        model_folder = folder / f"{number:03d}_{row['name']}"
        model_folder.mkdir(exist_ok=True)
        for key in catalog.suite("datacomp38"):
            entry = catalog.lookup(key)
            value = float(row[entry.column]) if row[entry.column] else 0.0
            metrics = ({"image_retrieval_recall@1": value, "text_retrieval_recall@1": value}
                       if entry.task == "zeroshot_retrieval" else {entry.main_metric: value})
            payload = {"dataset": key, "model": row["name"], "pretrained": row["pretrained"], "task": entry.task,
                       "metrics": metrics, "language": "en"}
            (model_folder / f"{key.replace('/', '_')}.json").write_text(json.dumps(payload))
            written += 1
    return written


def reading_command(folder: Path) -> list[str]:
    return [PYTHON, "-c", _READING, str(folder)]


def aggregate_command(folder: Path, output: Path) -> list[str]:
    return [PYTHON, "-m", "pipeline.aggregate", f"results_dir={folder}", "layout=openclip38", f"output={output}"]
