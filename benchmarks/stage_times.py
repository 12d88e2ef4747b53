"""Wall time of every pipeline stage: one `dvc repro` of a fresh clone, timed stage by stage.

Clones the repository (HEAD, or each `--rev`) into a temporary directory, so nothing is restored from
this checkout's cache or run-cache, runs `dvc repro` there and timestamps each "Running stage" line as
it streams; a stage's time runs from its line to the next one (or to the end). With several revisions
the table puts them side by side with the ratio to the first, all measured in this run.

    python benchmarks/stage_times.py                      # HEAD with its params.yaml
    python benchmarks/stage_times.py --rev main~3 --rev HEAD
    python benchmarks/stage_times.py --params configs/tiny.yaml
    python benchmarks/stage_times.py --here             # in this checkout: what `dvc repro` runs here
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def time_repro(rev: str, params: Path | None, console, here: bool = False) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="stage-times-") as tmp:
        clone = REPO if here else Path(tmp) / "repo"
        if not here:
            subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
            subprocess.run(["git", "checkout", "-q", rev], cwd=clone, check=True)
        if params:
            (clone / "params.yaml").write_text(params.read_text())
        env_path = f"{BIN}:{os.environ.get('PATH', '')}"
        times: dict[str, float] = {}
        current, t_stage = None, None
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "dvc"), "repro"],
            cwd=clone,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "PATH": env_path, "PYTHONPATH": str(clone / "src")},
        )
        for line in proc.stdout:
            m = re.search(r"Running stage '([^']+)'", line)
            if m:
                now = time.perf_counter()
                if current:
                    times[current] = now - t_stage
                current, t_stage = m.group(1), now
                console.print(f"[dim]{rev}: {current}[/]")
        if proc.wait() != 0:
            raise SystemExit(f"dvc repro at {rev} failed")
        end = time.perf_counter()
        if current:
            times[current] = end - t_stage
        times["total"] = end - t0
        return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", action="append", help="git revision to time (repeatable); default HEAD")
    ap.add_argument("--params", type=Path, help="params file to use instead of each revision's params.yaml")
    ap.add_argument(
        "--here",
        action="store_true",
        help="run `dvc repro` in this checkout instead (its cache and run-cache apply; results stay)",
    )
    a = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console()
    revs = ["workspace"] if a.here else (a.rev or ["HEAD"])
    results = [time_repro(rev, a.params.resolve() if a.params else None, console, a.here) for rev in revs]
    table = Table(title="dvc repro wall time per stage (s), " + ("this checkout" if a.here else "fresh clone"))
    table.add_column("stage")
    for rev in revs:
        table.add_column(rev, justify="right")
    if len(revs) > 1:
        table.add_column(f"{revs[-1]} / {revs[0]}", justify="right")
    for stage in results[0]:
        cells = [f"{r.get(stage, float('nan')):.1f}" for r in results]
        if len(revs) > 1:
            cells.append(f"{results[-1].get(stage, float('nan')) / results[0][stage]:.2f}x")
        table.add_row(stage, *cells)
    console.print(table)


if __name__ == "__main__":
    main()
