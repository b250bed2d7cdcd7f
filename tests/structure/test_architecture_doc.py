"""docs/architecture.md names every production module, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("apps_registry", "worker_agent", "supervisor_site")


def production_files() -> set[str]:
    files = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            if path.name == "__init__.py" and not path.read_text().strip():
                continue  # an empty package marker is not a module to describe
            files.add(path.relative_to(ROOT).as_posix())
    return files


def documented_files() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    pattern = r"`((?:" + "|".join(PACKAGES) + r")/[\w/]+\.py)`"
    return set(re.findall(pattern, text))


def test_every_module_is_named_in_the_architecture_doc():
    assert sorted(production_files() - documented_files()) == []


def test_the_architecture_doc_names_no_module_that_is_gone():
    assert sorted(documented_files() - production_files()) == []
