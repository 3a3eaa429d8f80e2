"""The README and docs/ stay true to the tree: every relative link points at a file that exists, and every `make`
target the README names is one the Makefile has."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(page.read_text()) if not re.match(r"^[a-z]+:|^#", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_points_at_a_file(page: Path):
    missing = [target for target in relative_links(page) if not (page.parent / target.split("#")[0]).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


def test_every_make_target_the_readme_names_exists():
    targets = set(re.findall(r"^([a-zA-Z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([a-z][\w-]*)", (REPO / "README.md").read_text()))
    assert named and named <= targets, f"README names make targets the Makefile lacks: {sorted(named - targets)}"


def test_the_readme_leads_a_newcomer_in():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert text.index("make demo") < text.index("## The package") < text.index("## Documentation")
    assert all(f"docs/{page.name}" in text for page in PAGES[1:]), "a docs page the README does not link to"


def test_the_link_check_finds_a_broken_link(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("see [a](missing.md), [b](https://example.org) and [c](#section)")
    assert relative_links(page) == ["missing.md"]
