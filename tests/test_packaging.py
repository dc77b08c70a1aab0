"""pyproject.toml: what ``pip install -e .`` installs (packages, package data, dependencies, the command)."""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGES = {"vle", "captioner", "llm", "prompts", "project_base", "vqa_llm", "training"}


def test_every_project_package_and_no_other_is_installed():
    found = set(find_packages(str(REPO), **PYPROJECT["tool"]["setuptools"]["packages"]["find"]))
    assert {name.split(".")[0] for name in found} == PACKAGES
    on_disk = {p.parent.relative_to(REPO).as_posix().replace("/", ".")
               for top in PACKAGES for p in (REPO / top).rglob("__init__.py")}
    assert found == on_disk


def test_package_data_holds_every_non_python_file_of_the_packages():
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]
    for top in PACKAGES:
        for path in (REPO / top).rglob("*"):
            if path.is_dir() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(REPO / top).as_posix()
            assert any(fnmatch.fnmatch(relative, glob.replace("**/", "*")) for glob in patterns.get(top, [])), \
                f"{top}/{relative} would be missing from an installed copy"


def test_dependencies_are_read_from_the_requirement_files():
    project = PYPROJECT["project"]
    assert set(project["dynamic"]) == {"dependencies", "optional-dependencies"}
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"] == {"file": ["requirements.txt"]}
    assert dynamic["optional-dependencies"]["dev"] == {"file": ["requirements-dev.txt"]}
    assert project["scripts"] == {"vqa-llm": "vqa_llm.cli:main"}
    # setuptools reads plain requirement lines only: no pip options (-r, --index-url, ...) in these files
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / name).read_text(encoding="utf-8").splitlines():
            assert not line.strip().startswith("-"), f"{name}: {line}"


def _imported_top_modules(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (relative imports as ``.``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." if node.level else node.module.split(".")[0])
    return found


def test_app_py_is_the_page_over_vqa_llm_alone():
    """``app.py`` (layout and event wiring) takes everything of the project from ``vqa_llm``, which never imports
    ``app``: the layering of the README, where import-linter (the packages only) does not look."""
    app_py = REPO / "app.py"
    assert _imported_top_modules(app_py) & (PACKAGES | {"."}) == {"vqa_llm"}
    assert len(app_py.read_text(encoding="utf-8").splitlines()) <= 300
    importing_app = [p.relative_to(REPO).as_posix() for p in (REPO / "vqa_llm").rglob("*.py")
                     if "app" in _imported_top_modules(p)]
    assert importing_app == []
