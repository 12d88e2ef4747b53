"""The README and docs/ point only at what exists.

- Every relative link in the repository's Markdown (`[text](path)`, `![alt](path)`, `[name]: path`, HTML
  `href` / `src`) names an existing file or folder, and a `#anchor` names a heading of the target file
  (GitHub's slugs), or of the same file for a bare `#anchor`.
- Every `docs/<file>[#anchor]` named in a source, config or Markdown file exists (pyproject.toml, configs
  and comments point readers into docs/; the folder was once deleted under them).

Code blocks and inline code are not links: a path in them is an example, not a reference.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

from conftest import REPO

SCANNED_FOR_DOCS_PATHS = (".py", ".toml", ".yaml", ".yml", ".md", ".cfg", ".txt")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[`~]*[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
_REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_HTML_ATTR = re.compile(r"<[a-zA-Z][^>]*?\s(?:href|src)\s*=\s*[\"']([^\"']*)[\"']")
_HTML_ANCHOR = re.compile(r"<[a-zA-Z][^>]*?\s(?:id|name)\s*=\s*[\"']([^\"']+)[\"']")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)
_SCHEME = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")  # https:, mailto:, //host: not files here
_DOCS_PATH = re.compile(r"(?<![\w./-])docs/[\w./-]*(?:#[\w-]+)?")


def repository_files(root: Path = REPO) -> list[Path]:
    """The project's files as git sees them: tracked, and untracked but not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return sorted({root / rel for rel in listed if rel and (root / rel).is_file()})


def without_code(text: str) -> str:
    """Markdown with fenced blocks removed and inline code spans blanked (their text is no link)."""
    text = _FENCE.sub("", text)
    return _INLINE_CODE.sub(lambda m: "x" * len(m.group(2)), text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text lower-cased, every character but letters,
    digits, marks, spaces, `-` and `_` dropped, spaces turned into `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    kept = "".join(c for c in text.lower() if unicodedata.category(c)[0] in "LMN" or c in " -_")
    return kept.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor a Markdown file offers: its headings' slugs (repeats get -1, -2, ...) and HTML ids."""
    text = _FENCE.sub("", markdown)
    found: set[str] = set()
    seen: dict[str, int] = {}
    for match in _HEADING.finditer(text):
        slug = github_slug(match.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found | set(_HTML_ANCHOR.findall(text))


def link_targets(markdown: str) -> list[str]:
    text = without_code(markdown)
    return _INLINE_LINK.findall(text) + _REFERENCE_DEF.findall(text) + _HTML_ATTR.findall(text)


def check_target(target: str, base: Path, root: Path) -> str | None:
    """Why `target` (relative to the folder `base`, or to `root` when it starts with /) does not
    resolve; None when it does."""
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part)
    if path_part:
        path = (root / path_part.lstrip("/")) if path_part.startswith("/") else (base / path_part)
    else:
        return "an empty link" if not anchor else None  # a bare #anchor: checked by the caller
    if not path.exists():
        return f"{path_part} does not exist"
    if anchor and path.suffix.lower() == ".md" and unquote(anchor) not in anchors(path.read_text()):
        return f"{path_part} has no heading with the anchor #{anchor}"
    return None


def broken_links(md: Path, root: Path = REPO) -> list[str]:
    text = md.read_text()
    problems = []
    for target in link_targets(text):
        if _SCHEME.match(target):
            continue
        if target.startswith("#"):
            why = None if unquote(target[1:]) in anchors(text) else f"no heading with the anchor {target}"
        else:
            why = check_target(target, md.parent, root)
        if why:
            problems.append(f"{md.relative_to(root)}: ({target}): {why}")
    return problems


def broken_docs_paths(path: Path, root: Path = REPO) -> list[str]:
    """`docs/...` paths named in a file (relative to the repository root) that do not resolve."""
    problems = []
    for mention in _DOCS_PATH.findall(path.read_text(errors="replace")):
        mention = mention.rstrip(".")  # the end of a sentence
        why = check_target(mention, root, root)
        if why:
            problems.append(f"{path.relative_to(root)} names {mention}: {why}")
    return problems


MARKDOWN = [p for p in repository_files() if p.suffix.lower() == ".md"]


def test_the_front_door_and_the_docs_are_there():
    names = {p.relative_to(REPO).as_posix() for p in MARKDOWN}
    assert {
        "README.md",
        "docs/data.md",
        "docs/team.md",
        "docs/study.md",
        "docs/performance.md",
        "docs/distributed.md",
    } <= names


@pytest.mark.parametrize("md", MARKDOWN, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_and_anchor_resolves(md):
    assert broken_links(md) == []


def test_every_docs_path_named_in_the_repository_exists():
    # this file's own examples (below) name missing files on purpose
    scanned = [
        p for p in repository_files() if p.suffix.lower() in SCANNED_FOR_DOCS_PATHS and p != Path(__file__).resolve()
    ]
    assert any(p.name == "pyproject.toml" for p in scanned)
    assert [problem for p in scanned for problem in broken_docs_paths(p)] == []


# --------------------------------------------------------------------------- the checks can fail


def test_github_slugs():
    assert github_slug("How `queue` runs the study") == "how-queue-runs-the-study"
    assert github_slug("What is tested, and what is not") == "what-is-tested-and-what-is-not"
    assert github_slug("Set up a remote (once per project)") == "set-up-a-remote-once-per-project"
    assert github_slug("Is the improvement real? Seeds and ablations") == "is-the-improvement-real-seeds-and-ablations"
    assert github_slug("Results of the study: 3 × 4") == "results-of-the-study-3--4"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n### b_c\n") == {"a", "a-1", "b_c"}


def test_broken_links_anchors_and_docs_paths_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Set up\n\nBack to [the top](../README.md#intro).\n")
    (tmp_path / "README.md").write_text(
        "# Intro\n\n"
        "[fine](docs/guide.md#set-up) [fine too](#intro) ![figure](docs) [web](https://example.org/x.md)\n"
        "[gone](docs/gone.md) [no such heading](docs/guide.md#setup) [here neither](#outro)\n"
        "`[in code](docs/nothing.md)`\n\n```\n[in a block](docs/nothing.md)\n```\n"
        "[ref]: docs/missing.md\n"
    )
    problems = broken_links(tmp_path / "README.md", tmp_path)
    assert len(problems) == 4, problems
    for words in (
        "docs/gone.md does not exist",
        "docs/guide.md has no heading with the anchor #setup",
        "no heading with the anchor #outro",
        "docs/missing.md does not exist",
    ):
        assert any(words in p for p in problems), (words, problems)
    assert broken_links(tmp_path / "docs" / "guide.md", tmp_path) == []

    (tmp_path / "settings.toml").write_text(
        "# see docs/guide.md#set-up, docs/guide.md, docs/.\n# and docs/old.md or docs/guide.md#setup\n"
    )
    problems = broken_docs_paths(tmp_path / "settings.toml", tmp_path)
    assert [p.split(" names ")[1].split(":")[0] for p in problems] == ["docs/old.md", "docs/guide.md#setup"]


def readme_module_table() -> list[str]:
    """The first column of the README's "module | owns" table: every `name.py` or `package/` named there."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("| module | owns |")
    rows = itertools.takewhile(lambda s: s.startswith("|"), lines[start + 2 :])
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]


def test_the_readme_module_table_lists_every_module_and_only_modules():
    src = REPO / "src" / "mae_exp"
    listed = readme_module_table()
    missing = [name for name in listed if not (src / name).exists()]
    assert not missing, f"README's module table names what src/mae_exp/ lacks: {missing}"
    packages = [name for name in listed if name.endswith("/")]
    modules = [
        str(p.relative_to(src)) for p in sorted(src.rglob("*.py")) if p.name not in ("__init__.py", "__main__.py")
    ]
    unlisted = [m for m in modules if m not in listed and not m.startswith(tuple(packages))]
    assert not unlisted, f"modules missing from README's module table: {unlisted}"
