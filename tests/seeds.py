"""Read the published tables out of the seed documents (`../shared/seeds/`, beside the project), so the tests can
check the project's bundled transcriptions against them cell by cell. The documents are not part of the project: a
clone without them skips those checks (`needs`), saying what each would check."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO

SEEDS = REPO.parent / "shared" / "seeds"
BLOG = SEEDS / "001_a80f9ccff5782a30.txt"
CLIP_PAPER = SEEDS / "002_4fbd52847bea3d67.txt"


def needs(document: Path, checks: str) -> pytest.MarkDecorator:
    """Skip a test where the seed document it reads is absent (a user's clone), with one line naming what it
    would check; it runs wherever the document is."""
    return pytest.mark.skipif(not document.is_file(), reason=f"would check {checks} against {document.name}, a seed "
                                                             f"document beside the project (../shared/seeds/), "
                                                             f"which this clone lacks")


def seed_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the seed documents belong beside the project (../shared/seeds)")
    return path.read_text()


def blog_tables() -> dict[int, pd.DataFrame]:
    """The blog's four tables by number, as printed: `dataset | model | ... |` rows, each table followed by its
    caption `Table N: ...`. Values are kept as the strings the blog printed."""
    tables: dict[int, pd.DataFrame] = {}
    header: list[str] | None = None
    rows: list[list[str]] = []
    for line in seed_text(BLOG).splitlines():
        caption = re.match(r"^Table (\d+): ", line)
        if caption and header:
            tables[int(caption.group(1))] = pd.DataFrame(rows, columns=header)
            header, rows = None, []
        elif line.startswith("dataset | "):
            header, rows = [cell.strip() for cell in line.strip(" |").split("|")], []
        elif header and "|" in line and not line.startswith("---"):
            rows.append([cell.strip() for cell in line.strip(" |").split("|")])
    return tables


def clip_paper_table9() -> pd.DataFrame:
    """Table 9 of the CLIP paper: dataset, classes, train size, test size, evaluation metric."""
    text = seed_text(CLIP_PAPER)
    start = text.index("| Dataset | Classes | Train size | Test size | Evaluation metric |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, classes, train, test, metric = [cell.strip() for cell in line.strip("| ").split("|")]
        rows.append({"dataset": name, "classes": int(classes), "train_size": int(train.replace(",", "")),
                     "test_size": int(test.replace(",", "")), "metric": metric})
    return pd.DataFrame(rows)


def clip_paper_table_text(number: int) -> str:
    """The flattened text of Table 10 or 11: its rows of numbers run together after the dataset names."""
    text = seed_text(CLIP_PAPER)
    caption = text.index(f"Table {number}: ")
    return text[text.rindex("Food101 CIFAR10 CIFAR100 Birdsnap", 0, caption):caption]
