"""The reference run on one GPU (an H100 or H200, no network, no DVC): one prepared script, results in one folder.

Steps, in this order (all by default, or the ones named):
  checks   the tests of what runs on the GPU here and nowhere else first: crop + flip on CUDA against
           the CPU reference, GPU rendering (pytest, a minute at most)
  archive  benchmarks/make_stl10.py renders a full-size STL-10-format archive (100,000 unlabeled, 5,000
           train, 8,000 test images) on the GPU into the scratch copy's data root
  bench    benchmarks/pretrain_vs_hf.py --configs seed --compile (bf16 autocast on CUDA)
  stages   every stage command of dvc.yaml, in the file's order (a valid order of its graph), in a scratch
           copy of the project whose params.yaml is configs/stl10_224.yaml with data.verify_md5: false
           (the archive is locally made), each one timed
nvidia-smi is sampled every 0.5 s throughout; summary.json gives each step's and stage's time and its GPU
utilisation and memory. A stage that fails stops the stages (the later ones need its outputs).

In parts: one call of a machine may be shorter than the whole run. The scratch copy (--work, outside any
git repository) keeps the archive, every output and the list of finished stages, so calling the script
again continues: finished stages are skipped, and a pre-training stopped mid-way resumes from its last
epoch checkpoint as `dvc repro` would resume it (--fresh starts over; give every call the same --set).
Times add up over the calls; a call killed mid-stage is listed as interrupted, untimed.

Needs: PyTorch, torchvision, PyYAML and, for `bench`, transformers; the stage scripts also import pydantic
and dvclive, and dvclive imports DVC itself. Where they are missing (a GPU image without them, no network)
they are installed from a folder of wheels carried along (--wheels, default .whl): make it beforehand, on
any machine with a package index, with `benchmarks/gpu_wheels.sh` (about 30 MB for CPython 3.12).

    python3 benchmarks/gpu_reference.py                          # everything, into $OUT or benchmarks/results/
    python3 benchmarks/gpu_reference.py checks archive bench     # the first part ...
    python3 benchmarks/gpu_reference.py stages                   # ... then the stages (again, to continue)
    python3 benchmarks/gpu_reference.py --small --work /tmp/mae-small    # the same path on a CPU, in minutes

--small checks the path without a GPU: a 600-image archive rendered on the CPU, the benchmark's default
config briefly, and the stages with a toy model at 32 px for an epoch or two (numbers mean nothing).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["src", "stages", "configs", "dvc.yaml"]  # what the stage commands read from the project
FULL_ARCHIVE = {"unlabeled": 100_000, "train": 5_000, "test": 8_000}
SMALL_ARCHIVE = {"unlabeled": 300, "train": 200, "test": 100}
# --small: the reference params, shrunk to a toy model and an epoch or two at 32 px
SMALL_PARAMS = {
    ("data", "input_size"): 32,
    ("model",): {
        "patch_size": 4,
        "encoder_dim": 32,
        "encoder_depth": 2,
        "encoder_heads": 2,
        "decoder_dim": 16,
        "decoder_depth": 1,
        "decoder_heads": 2,
        "mlp_ratio": 4.0,
        "norm_pix_loss": True,
    },
    ("pretrain", "epochs"): 1,
    ("pretrain", "batch_size"): 64,
    ("linear_probe", "epochs"): 2,
    ("linear_probe", "batch_size"): 64,
    ("finetune", "epochs"): 1,
    ("finetune", "batch_size"): 32,
    ("visualize", "images"): 3,
    ("visualize", "eval_images"): 40,
}
STEPS = ("checks", "archive", "bench", "stages")
BENCH = ["--configs", "seed", "--compile", "--repeats", "2"]  # 2 rounds: each compiles for a minute or so
SMALL_BENCH = ["--configs", "default", "--batch-size", "16", "--repeats", "1", "--min-seconds", "0"]
CHECKS = [
    "tests/test_performance.py",
    "-k",
    "not compiled",  # compiling would take minutes of device time
    "tests/test_make_stl10.py::test_rendering_on_the_gpu_gives_the_same_kind_of_images",
]
NEEDED = "import pydantic, dvclive"  # what the stage scripts need beyond PyTorch and PyYAML


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class Run:
    """What a run keeps: every command's output (steps.log), summary.json rewritten after every step, GPU
    samples, the benchmark's JSON, the stages' metrics. Kept in the scratch copy, so that a run continued
    in a later call adds to them, and copied to the results folder (which a machine may empty between
    calls) at every save."""

    def __init__(self, results: Path, work: Path, site: str | None):
        self.results, self.work, self.site = results, work, site
        self.kept = work / "reference-results"
        self.kept.mkdir(exist_ok=True)
        summary = self.kept / "summary.json"
        self.summary = json.loads(summary.read_text()) if summary.exists() else {}
        self.log = (self.kept / "steps.log").open("a")

    def save(self) -> None:
        (self.kept / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        if self.results != self.kept:
            for path in self.kept.iterdir():
                shutil.copy2(path, self.results / path.name)

    def pythonpath(self, src: Path) -> dict:
        return {"PYTHONPATH": os.pathsep.join(p for p in [str(src), self.site] if p)}

    def command(self, name: str, argv: list[str], cwd: Path, env: dict | None = None) -> tuple[int, float]:
        """Run argv, its output appended to steps.log and echoed; -> (exit status, seconds)."""
        header = f"\n===== {name}: {' '.join(argv)} (in {cwd}) at {now()}\n"
        print(header, end="", flush=True)
        self.log.write(header)
        self.log.flush()
        t0 = time.time()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        for line in proc.stdout:
            sys.stdout.write(line)
            self.log.write(line)
        rc = proc.wait()
        seconds = time.time() - t0
        footer = f"===== {name}: exit {rc} after {seconds:.1f} s\n"
        print(footer, end="", flush=True)
        self.log.write(footer)
        self.log.flush()
        return rc, seconds

    def timed(self, section: str, name: str, argv: list[str], cwd: Path, env: dict, **extra) -> int:
        """Run a command as summary[section][name]; a piece run again (a continued stage) adds up its calls.
        A call killed with this script (a machine's time limit) leaves `running_since`: the next call
        records it as interrupted, untimed."""
        entry = self.summary.setdefault(section, {}).setdefault(name, {"seconds": 0.0, "calls": []})
        if "running_since" in entry:
            entry["calls"].append({"start": entry.pop("running_since"), "end": None, "interrupted": True})
        start = entry["running_since"] = time.time()
        self.save()
        rc, seconds = self.command(f"{section[:-1]} {name}", argv, cwd, env)
        del entry["running_since"]
        entry["seconds"] = round(entry["seconds"] + seconds, 1)
        entry["rc"] = rc
        entry["calls"].append({"start": start, "end": start + seconds, "rc": rc})
        entry.update({k: v(seconds) if callable(v) else v for k, v in extra.items()})
        self.save()
        return rc


# --------------------------------------------------------------------------- dependencies


def ensure_dependencies(wheels: Path, work: Path) -> str | None:
    """Installs the carried wheels if the project's imports fail; -> a folder to put on PYTHONPATH, or None."""
    site = work / "site"  # where an earlier call installed them, when the environment was not writable
    check = {**os.environ, "PYTHONPATH": str(site)} if site.is_dir() else None
    if subprocess.run([sys.executable, "-c", NEEDED], capture_output=True, env=check).returncode == 0:
        return str(site) if site.is_dir() else None
    if not wheels.is_dir() or not any(wheels.glob("*.whl")):
        sys.exit(
            f"error: the stage scripts need pydantic and dvclive, which this Python lacks, and {wheels} holds "
            f"no wheels: run benchmarks/gpu_wheels.sh on a machine with a package index and carry {wheels.name}/"
        )
    names = ["pydantic", "dvclive"]
    print(f"installing {', '.join(names)} and what they need from {wheels} (no index)", flush=True)
    base = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels)]
    if subprocess.run(base + names).returncode == 0:
        return None
    print(f"installing into {site} instead (a folder put on PYTHONPATH)", flush=True)
    if subprocess.run(base + ["--target", str(site)] + names).returncode != 0:
        sys.exit(f"error: could not install pydantic and dvclive from {wheels} (see pip's message above)")
    return str(site)


# --------------------------------------------------------------------------- the scratch copy


def prepare_work(work: Path, small: bool, fresh: bool, overrides: dict) -> None:
    """A copy of the project's code and stages with the reference params, outside any git repository (so
    that DVCLive finds no repository to attach to, as in a plain run outside DVC)."""
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:  # the code is refreshed every call; data, outputs and scratch/ stay
        src, dst = REPO / name, work / name
        if dst.is_dir():
            shutil.rmtree(dst)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    params = yaml.safe_load((REPO / "configs" / "stl10_224.yaml").read_text())
    params["data"]["verify_md5"] = False  # a locally made archive has its own MD5
    for keys, value in [*(SMALL_PARAMS.items() if small else []), *overrides.items()]:
        section = params
        for key in keys[:-1]:
            section = section.get(key) if isinstance(section, dict) else None
        if not isinstance(section, dict) or keys[-1] not in section:
            sys.exit(f"error: --set {'.'.join(keys)}: configs/stl10_224.yaml has no such key")
        section[keys[-1]] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / params["data"]["root"]).mkdir(parents=True, exist_ok=True)


def stage_commands(work: Path) -> list[tuple[str, str]]:
    """(name, command) of every stage of dvc.yaml in file order, `foreach` stages expanded as DVC names them."""
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    out = []
    for name, stage in stages.items():
        if "foreach" in stage:
            out += [(f"{name}@{item}", stage["do"]["cmd"].replace("${item}", str(item))) for item in stage["foreach"]]
        else:
            out.append((name, stage["cmd"]))
    return out


# --------------------------------------------------------------------------- GPU samples


def start_sampling(kept: Path):
    if shutil.which("nvidia-smi") is None:
        return None
    query = "timestamp,utilization.gpu,utilization.memory,memory.used,power.draw,clocks.sm"
    return subprocess.Popen(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,nounits", "-lms", "500"],
        stdout=(kept / "nvidia_smi.csv").open("a"),
        stderr=subprocess.DEVNULL,
    )


def gpu_stats(kept: Path, summary: dict) -> None:
    """Each timed piece's mean and peak GPU utilisation and peak memory, from the samples in its calls."""
    path = kept / "nvidia_smi.csv"
    if not path.exists():
        return
    samples = []
    for row in csv.reader(path.open()):
        try:
            t = datetime.datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((t, float(row[1]), float(row[3])))
        except (ValueError, IndexError):
            continue  # the header lines (one per call) and any unreadable sample
    for section in ("steps", "stages"):
        for entry in summary.get(section, {}).values():
            inside = [s for s in samples if any(c["end"] and c["start"] <= s[0] <= c["end"] for c in entry["calls"])]
            if inside:
                util = [s[1] for s in inside]
                entry["gpu"] = {
                    "samples": len(inside),
                    "util_mean_pct": round(sum(util) / len(util), 1),
                    "util_max_pct": max(util),
                    "memory_max_mib": max(s[2] for s in inside),
                }


# --------------------------------------------------------------------------- steps


def step_checks(run: Run) -> int:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CHECKS]
    return run.timed("steps", "checks", argv, REPO, run.pythonpath(REPO / "src"))


def step_archive(run: Run, small: bool, cuda: bool) -> int:
    root = run.work / "data" / "raw"
    if (root / "stl10_binary.tar.gz").exists():
        print(f"archive: {root / 'stl10_binary.tar.gz'} exists, kept", flush=True)
        return 0
    sizes = SMALL_ARCHIVE if small else FULL_ARCHIVE
    argv = [
        sys.executable,
        str(REPO / "benchmarks" / "make_stl10.py"),
        "--root",
        str(root),
        "--device",
        "cuda" if cuda else "cpu",
        "--level",
        "0" if cuda else "1",
        *[f"--{split}={n}" for split, n in sizes.items()],
    ]
    n = sum(sizes.values())
    return run.timed(
        "steps",
        "archive",
        argv,
        REPO,
        run.pythonpath(REPO / "src"),
        images=n,
        images_per_s=lambda seconds: round(n / seconds, 1),
    )


def step_bench(run: Run, small: bool, args: str | None) -> int:
    out = run.kept / "pretrain_vs_hf.json"
    argv = [sys.executable, str(REPO / "benchmarks" / "pretrain_vs_hf.py"), "--json", str(out)]
    argv += args.split() if args is not None else SMALL_BENCH if small else BENCH
    return run.timed("steps", "bench", argv, REPO, {**run.pythonpath(REPO / "src"), "COLUMNS": "140"})


def step_stages(run: Run) -> int:
    done_file = run.work / "finished_stages.json"
    done = json.loads(done_file.read_text()) if done_file.exists() else []
    for name, cmd in stage_commands(run.work):
        if name in done:
            print(f"stage {name}: finished in an earlier call, skipped", flush=True)
            continue
        argv = cmd.split()
        if argv[0] == "python":  # the machine's Python may be called python3 only
            argv[0] = sys.executable
        rc = run.timed("stages", name, argv, run.work, run.pythonpath(run.work / "src"), cmd=cmd)
        if rc != 0:
            return rc
        done.append(name)
        done_file.write_text(json.dumps(done) + "\n")
    # what the stages measured: every metrics file and the plots, packed in one file
    with tarfile.open(run.kept / "metrics.tar.gz", "w:gz") as tar:
        for name in ("metrics", "plots", "params.yaml"):
            if (run.work / name).exists():
                tar.add(run.work / name, arcname=name)
    comparison = run.work / "metrics" / "comparison.json"
    if comparison.exists():
        run.summary["comparison"] = json.loads(comparison.read_text())
    run.summary["stages_total_s"] = round(sum(e["seconds"] for e in run.summary["stages"].values()), 1)
    run.save()
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("steps", nargs="*", metavar="STEP", help=f"{', '.join(STEPS)} (default: all, in this order)")
    ap.add_argument("--results", type=Path, help="results folder (default: $OUT, else benchmarks/results/gpu-<date>)")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/mae-gpu-reference"),
        help="scratch copy of the project with the archive and the outputs (outside any git repository)",
    )
    ap.add_argument("--wheels", type=Path, default=REPO / ".whl", help="carried wheels for what is missing")
    ap.add_argument("--small", action="store_true", help="a tiny archive and model: checks the path on a CPU")
    ap.add_argument("--fresh", action="store_true", help="delete the scratch copy first (archive, outputs, progress)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param of the reference config, e.g. pretrain.epochs=2 (YAML value; repeatable)",
    )
    ap.add_argument("--bench-args", help=f"pretrain_vs_hf.py's arguments instead of: {' '.join(BENCH)}")
    a = ap.parse_args()
    overrides = {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            ap.error(f"--set {item!r}: expected KEY=VALUE, e.g. pretrain.epochs=2")
        overrides[tuple(key.split("."))] = yaml.safe_load(value)
    steps = a.steps or list(STEPS)
    if set(steps) - set(STEPS):
        ap.error(f"unknown step {sorted(set(steps) - set(STEPS))[0]!r}; steps: {', '.join(STEPS)}")

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.small:
        sys.exit(
            "error: no GPU is visible to PyTorch; this run is meant for one (use --small to check the path on a CPU)"
        )
    work = a.work.resolve()
    if (
        subprocess.run(
            ["git", "-C", str(work.parent if not work.exists() else work), "rev-parse"], capture_output=True
        ).returncode
        == 0
    ):
        sys.exit(
            f"error: --work {work} is inside a git repository: DVCLive would attach its runs to it; "
            f"choose a folder outside (default /tmp/mae-gpu-reference)"
        )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = (
        a.results
        or (Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "results" / f"gpu-{stamp}")
    ).resolve()
    results.mkdir(parents=True, exist_ok=True)

    earlier = work / "reference-results" / "summary.json"
    if not a.fresh and earlier.exists() and json.loads(earlier.read_text()).get("small") != a.small:
        sys.exit(f"error: {work} holds a {'full' if a.small else '--small'} run's state; use --fresh or another --work")
    prepare_work(work, a.small, a.fresh, overrides)
    site = ensure_dependencies(a.wheels.resolve(), work)  # every step imports the project (pydantic)
    run = Run(results, work, site)
    run.summary["small"] = a.small
    run.summary.setdefault("calls", []).append(
        {
            "date": now(),
            "command": " ".join(["python3", *sys.argv]),
            "steps": steps,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": sys.version.split()[0],
            "work": str(work),
            "site": site,
            "overrides": a.set,
        }
    )
    run.save()
    sampler = start_sampling(run.kept)
    rc = 0
    try:
        for step in steps:
            rc = {
                "checks": lambda: step_checks(run),
                "archive": lambda: step_archive(run, a.small, cuda),
                "bench": lambda: step_bench(run, a.small, a.bench_args),
                "stages": lambda: step_stages(run),
            }[step]()
            if rc != 0:
                print(f"error: step {step} failed (exit {rc}); see {results / 'steps.log'}", flush=True)
                break
    finally:
        if sampler is not None:
            sampler.terminate()
            sampler.wait()
        gpu_stats(run.kept, run.summary)
        run.save()
    print(f"results in {results}: " + ", ".join(sorted(p.name for p in results.iterdir())), flush=True)
    sys.exit(rc)


if __name__ == "__main__":
    main()
