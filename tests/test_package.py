"""The package's layout: groups import only along the direction `pipeline/__init__.py` writes down, the root holds
entry points alone, and every module has a test file that mirrors it or is covered by a named one."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"
# Each group's rank: a module may import its own group and any group of a lower rank; groups of one rank are
# independent of each other. Mirrors the table in pipeline/__init__.py.
RANKS = {"errors": 0, "data": 1, "store": 1, "models": 2, "stages": 3, "tasks": 4, "reports": 5, "jobs": 6,
         "lab": 6, "offline": 6, "hydra_plugins": 7, "__main__": 7, "aggregate": 7, "bench": 7}
ROOT_MODULES = {"__init__.py", "__main__.py", "aggregate.py", "errors.py"}
# Modules whose tests live in a file named after something else: the module's test file by topic.
COVERED_BY = {
    "pipeline.__main__": "tests/test_pipeline.py",
    "pipeline.data.catalog": "tests/test_config.py",
    "pipeline.data.readers": "tests/data/test_readers.py",
    "pipeline.data.readers.hf": "tests/data/test_readers.py",
    "pipeline.data.readers.wds": "tests/data/test_readers.py",
    "pipeline.models.loading": "tests/models/test_loading.py",
    "pipeline.stages.embed.images": "tests/data/test_readers.py",
    "pipeline.stages.embed.projection": "tests/stages/test_heads.py",
    "pipeline.stages.embed.texts": "tests/stages/test_trimmed.py",
    "pipeline.stages.embed.trimmed": "tests/stages/test_trimmed.py",
    "pipeline.stages.explain.attention": "tests/stages/test_explain.py",
    "pipeline.stages.explain.figures": "tests/stages/test_explain.py",
    "pipeline.stages.explain.inputs": "tests/stages/test_explain.py",
    "pipeline.stages.explain.relevance": "tests/stages/test_explain.py",
    "pipeline.stages.heads.linear_probe": "tests/stages/test_heads.py",
    "pipeline.stages.heads.probe": "tests/stages/test_heads.py",
    "pipeline.stages.heads.splits": "tests/stages/test_heads.py",
    "pipeline.stages": "tests/stages/test_score.py",
    "pipeline.tasks.captioning": "tests/test_tasks.py",
    "pipeline.tasks.classification": "tests/test_tasks.py",
    "pipeline.tasks.multilabel": "tests/test_tasks.py",
    "pipeline.tasks.retrieval": "tests/test_tasks.py",
    "pipeline.tasks.selection": "tests/test_tasks.py",
    "pipeline.tasks.winogavil": "tests/test_tasks.py",
    "pipeline.store.artifacts": "tests/store/test_cache.py",
    "pipeline.jobs.explaining": "tests/stages/test_explain.py",
    "pipeline.reports.relevance": "tests/stages/test_explain.py",
    "pipeline.lab.postgres": "tests/lab/test_server.py",
    "pipeline.lab.users": "tests/lab/test_auth.py",
    "pipeline.lab.erase": "tests/lab/test_backup.py",
    "pipeline.lab.backup": "tests/lab/test_backup.py",
    "pipeline.lab.restore": "tests/lab/test_backup.py",
    "pipeline.bench.lab": "tests/test_bench.py",
    "pipeline.hydra_plugins.clip_tables.launcher": "tests/lab/test_server.py",
    "pipeline.hydra_plugins.clip_tables.tasks": "tests/lab/test_slurm.py",
    "pipeline.hydra_plugins.clip_tables.sweeper": "tests/jobs/test_plan.py",
    "pipeline.jobs.served": "tests/jobs/test_plan.py",
    "pipeline.hydra_plugins.clip_tables.watch": "tests/lab/test_slurm.py",
    "pipeline.bench.__main__": "tests/test_bench.py",
    "pipeline.offline.compositional": "tests/test_offline.py",
    "pipeline.offline.captions": "tests/test_offline.py",
    "pipeline.offline.tiny_coca": "tests/test_offline.py",
    "pipeline.stages.score.caption_bootstrap": "tests/stages/test_caption_metrics.py",
    "pipeline.stages.generate": "tests/jobs/test_captioning.py",
    "pipeline.bench.embedding": "tests/test_bench.py",
    "pipeline.bench.fixtures": "tests/test_bench.py",
    "pipeline.bench.processes": "tests/test_bench.py",
    "pipeline.bench.tables": "tests/test_bench.py",
    "pipeline.bench.store": "tests/test_bench.py",
    "pipeline.bench.served": "tests/test_bench.py",
    "pipeline.store.sql": "tests/store/test_index.py",
    "pipeline.offline.__main__": "tests/test_offline.py",
    "pipeline.offline.shapes": "tests/data/test_datasets.py",
    "pipeline.offline.tiny_clip": "tests/test_offline.py",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> list[tuple[str, Path]]:
    return sorted((module_name(path), path) for path in PACKAGE.rglob("*.py"))


def group(module: str) -> str:
    """`pipeline.stages.embed` -> stages; the package itself and pipeline.errors -> errors."""
    parts = module.split(".")
    return "errors" if len(parts) == 1 else parts[1]


def imported(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, inside a function) for every import of a pipeline module in `path`."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "pipeline":
                names = [child.module] if child.module != "pipeline" else [f"pipeline.{a.name}" for a in child.names]
                found.extend((child.lineno, name, nested) for name in names)
            elif isinstance(child, ast.Import):
                found.extend((child.lineno, a.name, nested) for a in child.names if a.name.split(".")[0] == "pipeline")
            visit(child, inner)

    visit(tree, False)
    return found


def target_group(name: str) -> str:
    """The group an imported name belongs to: `pipeline.CONF_DIR` is the package's own (errors' rank)."""
    parts = name.split(".")
    if len(parts) == 2 and not (PACKAGE / parts[1]).exists() and not (PACKAGE / f"{parts[1]}.py").exists():
        return "errors"
    return group(name)


def test_every_import_goes_along_the_layering():
    against = []
    for module, path in modules():
        source = group(module)
        for line, name, nested in imported(path):
            target = target_group(name)
            if module == "pipeline" and nested:
                continue  # the package's config resolvers import what they resolve, when called
            if target != source and RANKS[target] >= RANKS[source]:
                against.append(f"{path.relative_to(REPO)}:{line} ({source}) imports {name} ({target})")
    assert not against, "imports against the layering:\n" + "\n".join(against)


def test_the_layering_test_catches_an_import_against_the_direction(tmp_path, monkeypatch):
    bad = PACKAGE / "store" / "_layering_probe.py"
    bad.write_text("from pipeline.reports import tables\n")
    try:
        with pytest.raises(AssertionError, match=r"_layering_probe.py:1 \(store\) imports pipeline.reports"):
            test_every_import_goes_along_the_layering()
    finally:
        bad.unlink()


def test_every_group_has_a_rank_and_the_root_holds_entry_points_only():
    groups = {group(module) for module, _ in modules()}
    assert groups <= set(RANKS), groups - set(RANKS)
    assert {path.name for path in PACKAGE.glob("*.py")} == ROOT_MODULES
    docstring = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    table = docstring
    for name in set(RANKS) - {"__main__", "aggregate", "bench", "hydra_plugins"}:
        assert re.search(rf"\b{name}\b", table), f"{name} is missing from the table in pipeline/__init__.py"


def mirrored_test(module: str) -> Path:
    parts = module.split(".")[1:]
    if len(parts) == 1:
        return REPO / "tests" / f"test_{parts[0]}.py"
    return REPO / "tests" / parts[0] / f"test_{parts[-1]}.py"


def holds_code(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


@pytest.mark.parametrize("module,path", [(m, p) for m, p in modules() if holds_code(p) and m != "pipeline"],
                         ids=lambda value: value if isinstance(value, str) else "")
def test_every_module_has_a_test_file(module, path):
    test_file = REPO / COVERED_BY[module] if module in COVERED_BY else mirrored_test(module)
    assert test_file.is_file(), f"{module}: no {test_file.relative_to(REPO)} (or name its test file in COVERED_BY)"
    assert reaches(test_file, module), f"{test_file.relative_to(REPO)} does not import or run {module}"


def reaches(test_file: Path, module: str) -> bool:
    """Whether a test file imports the module (Hydra's installed name for the launcher) or runs its command."""
    parent, _, last = module.rpartition(".")
    text = test_file.read_text()
    command = parent if last == "__main__" else module  # running a module's command reaches it too
    if f"-m {command}" in text or f'"-m", "{command}"' in text:
        return True
    runs_modules = '"-m"' in text  # a helper that runs `python -m <its argument>`, called with the module's name
    if runs_modules and f'("{command}"' in text:
        return True
    name = module.removeprefix("pipeline.") if ".hydra_plugins." in module else module
    parent = name.rpartition(".")[0]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.module == name or (
                node.module == parent and any(alias.name == last for alias in node.names))):
            return True
        if isinstance(node, ast.Import) and any(alias.name == name for alias in node.names):
            return True
    return False


# -- paths named in the project's own files -----------------------------------------------------------------------
NAMED_PATH = re.compile(r"(?<![\w./-])pipeline/([A-Za-z0-9_/.-]*[A-Za-z0-9_])")
# Docs name modules relative to the package (`stages/embed/images.py`); a `.py` path under a group is ours.
DOC_PATH = re.compile(r"(?<![\w./-])((?:data|store|models|stages|tasks|reports|jobs|lab|bench|offline)/[\w/]*\.py)\b")


def project_files() -> list[Path]:
    """The repository's code, configs, docs and tests, as git lists them (tracked, or new and not ignored)."""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in listed if (name.endswith((".py", ".md", ".yaml", ".toml")) or name == "Makefile")
            and (REPO / name).is_file()]


def test_every_pipeline_path_named_in_code_configs_docs_and_tests_exists():
    """Comments, docstrings, YAML notes and docs that name a module by its path name one that exists: a module that
    moved leaves none behind (the flat layout's precision module was still named in three files after it had moved
    to models/)."""
    stale = set()
    for path in project_files():
        text = path.read_text(errors="replace")
        for found in NAMED_PATH.finditer(text):
            if not (REPO / "pipeline" / found.group(1).rstrip(".")).exists():
                stale.add(f"{path.relative_to(REPO)}: pipeline/{found.group(1)}")
        if path.suffix == ".md":
            stale.update(f"{path.relative_to(REPO)}: {found.group(1)}" for found in DOC_PATH.finditer(text)
                         if not (REPO / "pipeline" / found.group(1)).exists())
    assert not stale, sorted(stale)
