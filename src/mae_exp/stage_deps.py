"""dvc.yaml's per-stage source deps, written from the code: each stage depends on its script and on every
module of the package that the script imports, directly or through other modules (at any depth, top-level
or inside a function). A module missing from a stage's deps means `dvc repro` calls the stage up to date
after that module changed, with results from the old code; an extra one re-runs it for nothing.

    python -m mae_exp.stage_deps           # rewrite dvc.yaml's `.py` deps in place (nothing else changes)
    python -m mae_exp.stage_deps --check   # exit 1, with a diff, when dvc.yaml is not what it would write

A dev tool: no stage imports it. tests/test_stage_deps.py checks that the committed dvc.yaml is its output.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from pathlib import Path

import yaml

PACKAGE = "mae_exp"
ROOT = Path(__file__).resolve().parents[2]  # the repository: src/mae_exp/stage_deps.py


def module_file(name: str, src: Path) -> Path | None:
    """`mae_exp.data.stl10` -> its file under src/ (a package's __init__.py), or None if not ours."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    path = src / Path(*name.split("."))
    if path.is_dir():  # a namespace package (no __init__.py) runs no code of its own
        return path / "__init__.py" if (path / "__init__.py").exists() else None
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def imported_modules(path: Path, src: Path) -> set[str]:
    """Names of the package's modules that `path` imports anywhere in its body."""
    # the package a relative import starts from: a module's parent; for a/b/__init__.py, a.b itself
    package = list(path.relative_to(src).with_suffix("").parts[:-1]) if path.is_relative_to(src) else []
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import distributed`
    # importing a.b.c runs a/__init__.py and a/b/__init__.py too
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {m for m in found | parents if module_file(m, src)}


def closure(script: Path, root: Path = ROOT) -> list[str]:
    """The script, then every package file it imports, transitively, sorted: paths relative to `root`."""
    src = root / "src"
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [module_file(m, src) for m in imported_modules(path, src)]
    first = str(script.relative_to(root))
    return [first, *sorted(str(p.relative_to(root)) for p in seen if p != script)]


def stage_scripts(text: str) -> dict[str, str]:
    """stage -> the script its cmd runs (a `foreach` stage: every item runs the same script)."""
    stages = yaml.safe_load(text)["stages"]
    return {
        name: next(w for w in spec.get("do", spec)["cmd"].split() if w.endswith(".py")) for name, spec in stages.items()
    }


TOP_KEY = re.compile(r"^[A-Za-z_]")  # a top-level key: stages, plots, ...
STAGE = re.compile(r"^  ([A-Za-z_][\w-]*):")  # a stage's name line under `stages:`
DEPS = re.compile(r"^(\s+)deps:\s*$")
PY_DEP = re.compile(r"^(\s+)- (\S+\.py)\s*$")


def render(text: str, root: Path = ROOT) -> str:
    """dvc.yaml's text with each stage's `.py` deps replaced by its script's closure, in place of the run of
    `.py` lines its deps list starts with; every other line (comments, data deps, params) as it was."""
    scripts = stage_scripts(text)
    lines, out, stage, i = text.splitlines(keepends=True), [], None, 0
    in_stages = False
    while i < len(lines):
        line = lines[i]
        if TOP_KEY.match(line):  # blank lines and comments do not end a section
            in_stages = line.startswith("stages:")
            stage = None
        elif in_stages and (m := STAGE.match(line)):
            stage = m.group(1)
        out.append(line)
        i += 1
        if stage in scripts and DEPS.match(line):
            start = i
            while i < len(lines) and PY_DEP.match(lines[i]):
                i += 1
            if i == start:
                raise ValueError(f"dvc.yaml: the deps of stage {stage!r} do not start with its script")
            indent = PY_DEP.match(lines[start]).group(1)
            out += [f"{indent}- {path}\n" for path in closure(root / scripts[stage], root)]
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mae_exp.stage_deps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if dvc.yaml would change")
    parser.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    args = parser.parse_args(argv)
    text = args.dvc_yaml.read_text()
    written = render(text, args.dvc_yaml.resolve().parent)
    if written == text:
        print(f"{args.dvc_yaml}: every stage's source deps are its script's imports")
        return 0
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), written.splitlines(True), "dvc.yaml", "new"))
        print(f"\n{args.dvc_yaml} is out of date: run `python -m mae_exp.stage_deps`", file=sys.stderr)
        return 1
    args.dvc_yaml.write_text(written)
    print(f"{args.dvc_yaml}: source deps rewritten from the imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
