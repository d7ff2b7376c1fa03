"""Every document the code and the docs point at is in the project: a pointer to a file
that is not here (as once to a TOOLCHAIN.md outside the repository) fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MARKDOWN = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "models/MODEL_CARD.md",
]
SOURCES = sorted((REPO / "bin_daemon").rglob("*.py"))
DOC_NAME = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[A-Z][A-Z0-9_]*\.md)\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _exists(name: str, *folders: Path) -> bool:
    return any((folder / name).exists() for folder in folders)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_documents_named_in_the_code_exist(source: Path) -> None:
    for name in DOC_NAME.findall(source.read_text(encoding="utf-8")):
        assert _exists(name, REPO, REPO / "docs", REPO / "models"), (
            f"{source.relative_to(REPO)} names {name}"
        )


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_in_the_docs_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:|^#|^<", target):
            continue
        path = target.split("#", 1)[0]
        assert (page.parent / path).exists(), f"{page.relative_to(REPO)} links to {target}"
    for name in DOC_NAME.findall(text):
        assert _exists(name, page.parent, REPO, REPO / "docs"), (
            f"{page.relative_to(REPO)} names {name}"
        )
