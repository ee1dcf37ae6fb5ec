"""The documentation, kept honest: the README stays a front page, every results page says where its numbers come
from, every relative link (and anchor) leads somewhere, and no page points outside the repository.

Plain file reading, no model: part of the quick subset."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250
PROVENANCE_KEYS = ("**Date:**", "**Commit:**", "**Machine:**", "**Versions:**", "**Command:**")
OUTSIDE = re.compile(r"MBPO\.md|PITFALLS\.md|DESIGN\.md|FINDINGS\.md|\.\./shared|\bissue \d+\b")
# [text](target) and ![alt](target), an optional "title" after the target.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# Reference-style definitions: [name]: target
DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md, docs/**/*.md and results/*.md."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md")), *sorted((root / "results").glob("*.md"))]


def prose_lines(text: str, drop_code_spans: bool = True) -> list[str]:
    """The lines outside fenced code blocks, by default with inline code spans removed (a link inside code is an
    example, not a link)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line) if drop_code_spans else line)
    return out


def links(text: str) -> list[str]:
    found = []
    for line in prose_lines(text):
        found += LINK.findall(line)
        if m := DEFINITION.match(line):
            found.append(m.group(1))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a markdown file's headings (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(text, drop_code_spans=False):
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target))  # http:, https:, mailto:, ...


def readme_problems(root: Path = ROOT) -> list[str]:
    lines = (root / "README.md").read_text().splitlines()
    return [f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"] if len(lines) > README_MAX_LINES else []


def provenance_problems(root: Path = ROOT) -> list[str]:
    """Every results page opens (first non-empty line) with `> **Date:** ... **Command:** ...`."""
    pages = sorted((root / "results").glob("*.md"))
    if not pages:
        return ["results/ holds no page"]
    problems = []
    for page in pages:
        first = next((line for line in page.read_text().splitlines() if line.strip()), "")
        missing = [k for k in PROVENANCE_KEYS if k not in first]
        if not first.startswith("> **Date:**") or missing:
            problems.append(f"{page.relative_to(root)}: first line is not the provenance block (missing {missing})")
    return problems


def link_problems(root: Path = ROOT) -> list[str]:
    """Relative links to files that do not exist, or to headings a markdown file does not have."""
    problems = []
    for doc in doc_files(root):
        for target in links(doc.read_text()):
            if is_external(target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(root)}: {target}"
            if not dest.exists():
                problems.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                problems.append(f"{where}: no heading with anchor #{anchor}")
    return problems


def outside_problems(root: Path = ROOT) -> list[str]:
    """Mentions of files outside the repository, and links that leave it."""
    problems = []
    for doc in doc_files(root):
        text = doc.read_text()
        problems += [f"{doc.relative_to(root)}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
        for target in links(text):
            path = target.partition("#")[0]
            if is_external(target) or not path:
                continue
            dest = (doc.parent / path).resolve()
            if path.startswith("/") or not dest.is_relative_to(root.resolve()):
                problems.append(f"{doc.relative_to(root)}: {target} leaves the repository")
    return problems


def test_the_readme_is_a_front_page():
    assert not readme_problems()


def test_every_results_page_opens_with_its_provenance():
    assert not provenance_problems(), provenance_problems()


def test_every_relative_link_leads_somewhere():
    assert not link_problems(), link_problems()


def test_no_doc_points_outside_the_repository():
    assert not outside_problems(), outside_problems()


# The checks above must see what they are for: each on a small broken tree.
def tree(tmp_path: Path, readme: str = "# x\n", page: str | None = None, doc: str = "# Doc\n") -> Path:
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(doc)
    (tmp_path / "results").mkdir()
    block = "> **Date:** d · **Commit:** c · **Machine:** m · **Versions:** v · **Command:** `x`\n"
    (tmp_path / "results" / "r.md").write_text(page if page is not None else block + "\n# Study\n\n## Table\n")
    return tmp_path


def test_the_checks_pass_a_sound_tree(tmp_path):
    root = tree(tmp_path, readme="# x\n[a](docs/a.md) [r](results/r.md#table) [w](https://example.org)\n")
    assert not readme_problems(root) + provenance_problems(root) + link_problems(root) + outside_problems(root)


def test_a_long_readme_is_seen(tmp_path):
    assert readme_problems(tree(tmp_path, readme="line\n" * (README_MAX_LINES + 1)))


def test_a_page_without_provenance_is_seen(tmp_path):
    late = "# Study\n\n> **Date:** d · **Commit:** c · **Machine:** m · **Versions:** v · **Command:** `x`\n"
    no_command = "\n> **Date:** d · **Commit:** c · **Machine:** m · **Versions:** v\n"
    for i, page in enumerate((late, no_command)):
        (tmp_path / str(i)).mkdir()
        assert provenance_problems(tree(tmp_path / str(i), page=page)), page


def test_a_moved_page_and_a_missing_heading_are_seen(tmp_path):
    root = tree(tmp_path, readme="[gone](docs/moved.md)\n", doc="[r](../results/r.md#nothing-here)\n")
    assert [p.split(": ")[-1] for p in link_problems(root)] == ["no such file", "no heading with anchor #nothing-here"]


def test_links_in_code_are_examples_not_links(tmp_path):
    root = tree(tmp_path, readme="`[a](gone.md)`\n```\n[b](gone.md)\n```\n")
    assert not link_problems(root)


def test_pointers_outside_the_repository_are_seen(tmp_path):
    outside = "../" + "shared/" + "MBPO" + ".md"  # spelled in parts: this file must not point outside itself
    root = tree(tmp_path, readme=f"see {outside}\n", doc="[up](../../elsewhere.md)\n")
    assert len(outside_problems(root)) == 3


def test_anchors_follow_github():
    text = "# The default run's pairs\n## Why 32/255 on this world\n## `summary.json`\n## Table\n## Table\n"
    assert anchors(text) == {"the-default-runs-pairs", "why-32255-on-this-world", "summaryjson", "table", "table-1"}
