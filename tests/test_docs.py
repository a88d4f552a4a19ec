"""The documentation holds together: every relative link and #anchor in README.md and docs/ resolves (a moved
file or a renamed heading fails here), every docs page is linked, and every service setting is documented."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

from lsmseg.service.metrics import STAGES
from lsmseg.service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DOCUMENTS = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = "".join(char for char in text if char.isalnum() or char in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every #fragment that leads somewhere in a Markdown file (repeated headings get -1, -2, …)."""
    seen: Counter[str] = Counter()
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        heading = _HEADING.match(line)
        if heading is None:
            continue
        slug = github_slug(heading.group(1))
        found.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def link_targets(path: Path) -> list[tuple[int, str]]:
    targets = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = _CODE_SPAN.sub("code", line)  # a link inside a code span does not render
        targets += [(number, target) for target in _INLINE_LINK.findall(line)]
        definition = _REFERENCE_DEFINITION.match(line)
        if definition is not None:
            targets.append((number, definition.group(1)))
    return targets


def broken_links(path: Path) -> list[str]:
    """'file:line: target (why)' for each relative link of `path` that leads nowhere."""
    broken = []
    for number, target in link_targets(path):
        if _SCHEME.match(target):  # https:, mailto: …: not this repository's to check
            continue
        location, _, fragment = target.partition("#")
        resolved = (path.parent / unquote(location)).resolve() if location else path
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}: {target}"
        if not location and not fragment:
            broken.append(f"{where} (empty link)")
        elif not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif fragment and resolved.suffix == ".md" and unquote(fragment) not in anchors(resolved):
            broken.append(f"{where} (no heading #{fragment} in {resolved.name})")
    return broken


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(document):
    assert broken_links(document) == []


def test_the_checker_finds_missing_files_and_anchors_and_ignores_code(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## The `demo` model (`python -m training.demo`)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Repeated\n\n## Repeated\n\n"
        "[fine](other.md) [fine](other.md#the-demo-model-python--m-trainingdemo) [fine](#repeated-1)\n"
        "[web](https://example.com/x.md#nowhere) ![figure](other.md)\n"
        "[gone](missing.md)\n"
        "[no heading](other.md#the-demo-model)\n"
        "[no local heading](#repeated-2)\n"
        "`[in code](missing.md)`\n"
        "```\n[in a fence](missing.md)\n```\n"
        "[ref]: nothing.png\n"
    )
    found = [line.split(": ", 1)[1] for line in broken_links(page)]
    assert found == [
        "missing.md (no such file)",
        "other.md#the-demo-model (no heading #the-demo-model in other.md)",
        "#repeated-2 (no heading #repeated-2 in page.md)",
        "nothing.png (no such file)",
    ]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("The demo model (`python -m training.demo`)", "the-demo-model-python--m-trainingdemo"),
        ("Service load (`benchmarks/service_load.py`)", "service-load-benchmarksservice_loadpy"),
        ("Redis: persistence and eviction", "redis-persistence-and-eviction"),
        ("The paper's ablations in [miniature](x.md)", "the-papers-ablations-in-miniature"),
    ],
)
def test_github_slugs_of_headings_with_code_links_and_punctuation(heading, slug):
    assert github_slug(heading) == slug


def test_every_docs_page_is_linked_from_the_readme_or_another_page():
    linked = set()
    for document in DOCUMENTS:
        for _, target in link_targets(document):
            location = target.partition("#")[0]
            if location and not _SCHEME.match(target):
                linked.add((document.parent / unquote(location)).resolve())
    orphans = [str(page.relative_to(ROOT)) for page in DOCUMENTS[1:] if page.resolve() not in linked]
    assert orphans == []


def test_configuration_page_documents_every_service_setting():
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    variables = [f"LSMSEG_{name.upper()}" for name in Settings.model_fields]
    assert [variable for variable in variables if variable not in page] == []


def test_readme_first_request_is_a_committed_example_with_its_classes():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"curl -F image=@(\S+) \\\n\s+-F 'classes=(\[[^\]]*\])'", readme)
    assert match, "the quickstart's curl request is not where this test looks for it"
    image, classes = ROOT / match.group(1), json.loads(match.group(2))
    listed = json.loads((image.parent / "examples.json").read_text())["examples"]
    assert {"file": image.name, "classes": classes}.items() <= next(
        entry for entry in listed if entry["file"] == image.name
    ).items()


def test_metrics_page_names_every_stage_the_service_times():
    page = (DOCS / "deployment.md").read_text(encoding="utf-8")
    row = next(line for line in page.splitlines() if line.startswith("| `lsmseg_stage_duration_seconds`"))
    assert set(re.findall(r"`(\w+)`", row.partition("`stage`:")[2])) == set(STAGES)
