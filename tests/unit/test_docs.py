"""The docs stay true to the tree: the test map in docs/TESTING.md names every file under
tests/ and only files that exist, the README stays short, and every relative link in the
README, BENCHMARKS.md and docs/ reaches a file (and, with ``#anchor``, a heading in it),
and every figure of BENCHMARKS.md names the command and the commit that made it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
TESTING = ROOT / "docs" / "TESTING.md"
README_MAX_LINES = 200

# A link's target: `](target)` or `](target "title")`.
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")
CODE_SPAN = re.compile(r"`[^`\n]+`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
MAP_ROW = re.compile(r"^\| `(tests/[^`]+\.py)` \|", re.M)


def markdown_files() -> list[Path]:
    """README.md, BENCHMARKS.md and every page under docs/."""
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    return [f for f in files if f.exists()]


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file's headings make (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in prose_lines(path.read_text()):
        m = HEADING.match(line)
        if m is None:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file (code left out)."""
    found: list[str] = []
    for line in prose_lines(path.read_text()):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
                continue
            found.append(target)
    return found


def files_under_tests() -> set[str]:
    """Every Python file under tests/ but the packages' __init__.py, relative to ROOT."""
    return {p.relative_to(ROOT).as_posix() for p in TESTS.rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def mapped_files() -> list[str]:
    """The files the test map of docs/TESTING.md names, in its order."""
    text = TESTING.read_text()
    assert "\n## Test map\n" in text, "docs/TESTING.md has no '## Test map' section"
    section = text.split("\n## Test map\n", 1)[1].split("\n## ", 1)[0]
    return MAP_ROW.findall(section)


def test_the_test_map_names_every_test_file() -> None:
    mapped = set(mapped_files())
    missing = sorted(f for f in files_under_tests() - mapped if Path(f).name.startswith("test_"))
    assert not missing, f"test files missing from the map in docs/TESTING.md: {missing}"
    helpers = sorted(files_under_tests() - mapped)
    assert not helpers, f"modules under tests/ missing from the map in docs/TESTING.md: {helpers}"


def test_the_test_map_names_only_files_that_exist() -> None:
    mapped = mapped_files()
    gone = sorted(f for f in mapped if not (ROOT / f).is_file())
    assert not gone, f"the map in docs/TESTING.md names files that do not exist: {gone}"
    twice = sorted({f for f in mapped if mapped.count(f) > 1})
    assert not twice, f"the map in docs/TESTING.md names files more than once: {twice}"


def test_the_readme_is_short() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines < README_MAX_LINES, (
        f"README.md has {lines} lines (the limit is {README_MAX_LINES})")


def test_relative_links_reach_a_file_and_a_heading() -> None:
    broken: list[str] = []
    for page in markdown_files():
        for target in links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            name = f"{page.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{name}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{name}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_slug_rule() -> None:
    assert slug("What an ack means (the guarantees the tests check)") == (
        "what-an-ack-means-the-guarantees-the-tests-check")
    assert slug("Sweep: `dstore-batch bench --sweep --duration-s 5`") == (
        "sweep-dstore-batch-bench---sweep---duration-s-5")
    assert slug("no_append and retries") == "no_append-and-retries"


COMMAND = re.compile(r"`(?:dstore-batch|python|locust|bash|CI=true|PYTHONPATH=\S+|for) [^`]*`")
COMMIT = re.compile(r"\b[0-9a-f]{7,40}\b")


def tables(lines: list[str]) -> list[tuple[str, list[list[str]]]]:
    """Each Markdown table of ``lines``: the paragraph just before it, and its rows (the
    header first, the divider dropped) as lists of cells."""
    out: list[tuple[str, list[list[str]]]] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        before: list[str] = []
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        while j >= 0 and lines[j].strip() and not lines[j].startswith(("#", "|")):
            before.insert(0, lines[j])
            j -= 1
        rows = []
        while i < len(lines) and lines[i].startswith("|"):
            cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
            i += 1
        out.append((" ".join(before), rows))
    return out


def test_every_benchmark_figure_names_its_command_and_commit() -> None:
    """BENCHMARKS.md: a table's rows each name a command and a commit in their own
    columns, or the paragraph before the table names them for all of its rows."""
    found = tables(prose_lines((ROOT / "BENCHMARKS.md").read_text()))
    assert len(found) >= 8
    for before, rows in found:
        header = [c.lower() for c in rows[0]]
        if "command" in header and "commit" in header:
            columns = header.index("command"), header.index("commit")
            last = ["", ""]
            for row in rows[1:]:
                # "same" (or "same run") repeats the row above's cell.
                cells = [last[k] if row[c].startswith("same") else row[c]
                         for k, c in enumerate(columns)]
                assert COMMAND.search(cells[0]) and COMMIT.search(cells[1]), row
                last = cells
        elif header[0] != "machine":  # the machines' own table
            assert COMMAND.search(before) and COMMIT.search(before), (before, header)
