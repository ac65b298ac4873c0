"""README.md and docs/: every link leads somewhere, the map names every module, the README fits a sitting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings (code blocks skipped)."""
    found, fence = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and anchor not in anchors(file)):
            broken.append(target)
    assert broken == []


def test_the_map_names_every_module_of_the_package():
    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = architecture.split("## The map", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"^\s*([\w.]+/?)\s", block, flags=re.M))
    modules = {p.name for p in (ROOT / "gateway").rglob("*.py") if p.name != "__init__.py"}
    rooms = {p.name + "/" for p in (ROOT / "gateway").iterdir() if (p / "__init__.py").exists()}
    assert (modules | rooms) - named == set(), "add them to docs/architecture.md's map"


def test_every_module_has_its_test_where_the_map_says():
    """gateway/<room>/<module>.py is tested in tests/<room>/test_<module>.py, when it has a test."""
    tests = {p.name: p.parent.relative_to(ROOT / "tests") for p in (ROOT / "tests").rglob("test_*.py")}
    misplaced = []
    for module in (ROOT / "gateway").rglob("*.py"):
        room = module.parent.relative_to(ROOT / "gateway")
        found = tests.get(f"test_{module.stem}.py")
        if found is not None and found != room:
            misplaced.append(f"{module.relative_to(ROOT)} is tested in tests/{found}")
    assert misplaced == []


def test_the_readme_fits_a_sitting():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
