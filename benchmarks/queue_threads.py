"""How the study queue should use a CPU: one experiment at a time with every core, or one per core with one
thread each. Runs the real stage scripts on the study's data (photos10 through the `folder` source, the
study's overrides), the same work both ways, in the same run:

  serial:   pre-train original, then improved (threads = all cores), then fine-tune both encoders one by one;
  parallel: the two pre-trainings at once (threads 1 each), then the two fine-tunings at once.

Printed per round and kind: the serial wall time (sum) over the parallel one (the slower of the two), i.e. how
much sooner the same two jobs finish run side by side; > 1 favours `queue -j 2` with one thread per job.

    python benchmarks/queue_threads.py --root /tmp/photos10 --epochs 2 --finetune-epochs 1 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def workdir(base: Path, name: str, params: dict, prepared: Path) -> Path:
    """A directory the stage scripts can run in: params.yaml, stages/, and the prepared data linked in."""
    d = base / name
    (d / "data").mkdir(parents=True)
    shutil.copytree(REPO / "stages", d / "stages")
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (d / "data" / "prepared").symlink_to(prepared)
    return d


def command(kind: str, variant: str, src: str | None = None) -> list[str]:
    if kind == "pretrain":
        return [sys.executable, "stages/pretrain.py", variant, "--data", "data/prepared",
                "--checkpoint", f"models/{variant}/checkpoint.pt", "--encoder", f"models/{variant}/encoder.pt",
                "--live", f"metrics/pretrain/{variant}", "--scratch", f"scratch/pretrain_{variant}"]  # fmt: skip
    return [sys.executable, "stages/finetune.py", variant, "--encoder", f"{src}/models/{variant}/encoder.pt",
            "--data", "data/prepared", "--live", f"metrics/finetune/{variant}", "--scratch",
            f"scratch/finetune_{variant}", "--predictions", f"predictions/finetune_{variant}.npz"]  # fmt: skip


def start(d: Path, args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen(args, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait(p: subprocess.Popen) -> None:
    _, err = p.communicate()
    if p.returncode:
        raise SystemExit(f"{' '.join(p.args)} failed (exit {p.returncode}):\n{err[-2000:]}")


def timed(jobs: list[tuple[Path, list[str]]], together: bool) -> list[float]:
    """Wall seconds of each job, run one after another or all at once (each from its own start)."""
    if not together:
        walls = []
        for d, args in jobs:
            t = time.perf_counter()
            wait(start(d, args))
            walls.append(time.perf_counter() - t)
        return walls
    t = time.perf_counter()
    procs = [start(d, args) for d, args in jobs]
    walls = []
    for p in procs:
        wait(p)
        walls.append(time.perf_counter() - t)
    return walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="/tmp/photos10", help="the photos10 folder (python -m mae_exp.data.photos10)")
    ap.add_argument("--epochs", type=int, default=2, help="pre-training epochs of each job")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides = {k: v for k, v in params["study"]["overrides"].items() if "per_encoder" not in k}
    overrides.update({"data.root": a.root, "pretrain.epochs": a.epochs, "finetune.epochs": a.finetune_epochs})
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[leaf] = value
    params["finetune"]["base_lr"], params["finetune"]["layer_decay"] = [8e-3], [0.75]  # one point: the cost
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        prep = workdir(base, "prepare", params, base / "none")
        (prep / "data" / "prepared").unlink()
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        subprocess.run([sys.executable, "stages/download.py", "--out", "data/prepared"], cwd=prep, env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        prepared = prep / "data" / "prepared"
        print(
            f"{cores} cores; photos10 from {a.root}; pre-training {a.epochs} epochs, fine-tuning "
            f"{a.finetune_epochs}; serial = threads {cores}, one job at a time; parallel = threads 1, 2 at once"
        )
        for r in range(a.rounds):
            dirs = {}
            for mode, threads in (("serial", cores), ("parallel", 1)):
                dirs[mode] = workdir(base, f"r{r}-{mode}", {**params, "threads": threads}, prepared)
            for kind in ("pretrain", "finetune"):
                walls = {}
                for mode in ("serial", "parallel"):  # same order every round: both see the same machine
                    d = dirs[mode]
                    jobs = [(d, command(kind, v, str(d))) for v in ("original", "improved")]
                    walls[mode] = timed(jobs, together=mode == "parallel")
                serial, parallel = sum(walls["serial"]), max(walls["parallel"])
                extra = ""
                if kind == "pretrain":
                    ips = {
                        m: [
                            json.loads((dirs[m] / f"metrics/pretrain/{v}/metrics.json").read_text())["images_per_s"]
                            for v in ("original", "improved")
                        ]
                        for m in dirs
                    }
                    alone = "/".join(f"{x:.0f}" for x in ips["serial"])
                    side = "/".join(f"{x:.0f}" for x in ips["parallel"])
                    extra = f"; images/s serial {alone}, parallel {side} (sum {sum(ips['parallel']):.0f})"
                each = " + ".join(f"{w:.1f}" for w in walls["serial"])
                print(
                    f"round {r + 1} {kind}: serial {serial:.1f} s ({each}), parallel {parallel:.1f} s: "
                    f"serial / parallel = {serial / parallel:.2f}{extra}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
