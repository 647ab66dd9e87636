"""The documentation's relative links point at files and headings that exist.

Checks every Markdown link ``[text](target)`` and image ``![alt](target)`` in ``README.md``, ``docs/*.md`` and
``bundle/docs/README.md`` whose target is not a URL: the file must exist relative to the page, and a ``#anchor``
must be the GitHub slug of one of that file's headings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "bundle" / "docs" / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`|\*\*|\*|\[|\]\([^)]*\)", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _lines_outside_code(path: Path) -> list[str]:
    lines, in_code = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub anchors of every heading of a Markdown file (duplicates get ``-1``, ``-2``, ... as on GitHub)."""
    seen: dict[str, int] = {}
    result = set()
    for line in _lines_outside_code(path):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(path: Path) -> list[str]:
    """Link targets of a page that are neither URLs nor mail addresses, outside code blocks and code spans."""
    targets = []
    for line in _lines_outside_code(path):
        line = re.sub(r"`[^`]*`", "", line)
        targets += [t for t in LINK.findall(line) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]
    return targets


def test_github_slug_known_answers():
    assert github_slug("Hard preset: side by side (issue 13)") == "hard-preset-side-by-side-issue-13"
    assert github_slug("Pilot result, and an amendment (2026-12-03, before any run)") == (
        "pilot-result-and-an-amendment-2026-12-03-before-any-run"
    )
    assert github_slug("Options of `registration_pair_transforms`") == "options-of-registration_pair_transforms"


def test_relative_links_detects_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](missing.md) [web](https://example.org)\n```\n[code](x.md)\n```\n")
    assert relative_links(page) == ["#title", "missing.md"]
    assert anchors(page) == {"title"}
    assert "nope" not in anchors(page)


def test_anchors_number_repeated_headings(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("## Results\n\n### Results\n\n```\n# not a heading\n```\n")
    assert anchors(page) == {"results", "results-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(f"{target}: no file {destination}")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading with anchor '{anchor}' in {destination.name}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)
