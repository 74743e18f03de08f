"""Every relative Markdown link of the repository's own .md files points to a file or folder that exists.

Links are ``[text](target)`` and ``![alt](target)`` outside fenced code blocks and inline code;
web links (``http(s)://``, ``mailto:``) and in-page anchors (``#...``) are skipped, and an anchor
after a path (``file.md#section``) is dropped before the check.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)")


def markdown_files() -> list[Path]:
    """The repository's .md files: tracked, plus untracked ones git does not ignore."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        files = [ROOT / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        files = [p for p in ROOT.rglob("*.md") if not {".venv", ".git"} & set(p.relative_to(ROOT).parts)]
    return sorted(p for p in files if p.is_file())


def relative_links(text: str) -> list[tuple[int, str]]:
    links, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in LINK.findall(INLINE_CODE.sub("``", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # a web link, mailto:, or an anchor in the same page
            links.append((number, target.split("#", 1)[0]))
    return links


def test_the_link_parser():
    text = "\n".join(
        [
            'see [the design](docs/design.md#packages) and ![plot](img.png "title")',
            "[web](https://example.org) [anchor](#top) `[in code](nowhere.md)`",
            "```",
            "[fenced](nowhere.md)",
            "```",
            "[`code text`](tools/compare_runs.py)",
        ]
    )
    assert relative_links(text) == [(1, "docs/design.md"), (1, "img.png"), (6, "tools/compare_runs.py")]


def test_markdown_files_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert {"README.md", "docs/design.md"} <= names


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_existing_files(md: Path):
    missing = [
        f"{md.relative_to(ROOT)}:{number}: {target}"
        for number, target in relative_links(md.read_text(encoding="utf-8"))
        if not (md.parent / target).exists()
    ]
    assert not missing, "links to files that do not exist:\n" + "\n".join(missing)
