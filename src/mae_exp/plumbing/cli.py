"""How a stage script runs: load and validate params first, turn known failures into one clear line.

Exit status: 2 for bad input (arguments, params), 1 for a failure the message explains, 128 + N for a
stage stopped by signal N (130 for Ctrl-C, 143 for SIGTERM), as a shell reports it.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from .config import ConfigError, Params, load_params
from .errors import DiskFull, DistributedError, Interrupted, TrainingDiverged, out_of_space
from .progress import console


def run_stage(
    main,
    argv_names: tuple[str, ...] = (),
    choices: dict[str, tuple[str, ...] | Callable[[Params], tuple[str, ...]]] | None = None,
    paths: tuple[str, ...] = (),
    check: Callable[[Params], None] | None = None,
) -> None:
    """Parse positional args and `--<path> PATH` for each of `paths` (dvc.yaml's `cmd` passes them, so a
    path is written only there), load params.yaml, call main(params, *args, **paths); exit 2 on bad input.
    `check(params)`: what the stage script adds to the validation (mae_exp.recipes.check_all, the recipes' own
    settings, which this layer does not know). (Training stages wrap main in distributed.processes.)"""
    script = sys.argv[0]
    args, options = sys.argv[1 : 1 + len(argv_names)], sys.argv[1 + len(argv_names) :]
    named = dict(zip(options[::2], options[1::2]))
    if (
        len(args) != len(argv_names)
        or any(a.startswith("--") for a in args)
        or len(options) % 2
        or sorted(named) != sorted(f"--{p}" for p in paths)
    ):
        _fail(
            f"usage: python {script} {' '.join([*(n.upper() for n in argv_names), *(f'--{p} PATH' for p in paths)])}"
            " (dvc.yaml's cmd gives the paths)",
            2,
        )
    try:
        params: Params = load_params("params.yaml")
        if check is not None:
            check(params)
    except ConfigError as e:
        _fail(f"invalid parameters: {e}", 2)
    for name, value in zip(argv_names, args):
        allowed = (choices or {}).get(name)
        allowed = allowed(params) if callable(allowed) else allowed  # e.g. the recipes params.yaml has
        if allowed and value not in allowed:
            _fail(f"{script}: {name} must be one of {', '.join(allowed)}, got {value!r}", 2)
    stopped_by = [signal.SIGINT]

    def on_sigterm(signum, _frame):  # `kill`, `dvc queue kill`: stop as Ctrl-C does, and say so
        stopped_by[0] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        main(params, *args, **{p: named[f"--{p}"] for p in paths})
    except DistributedError as e:  # can differ between machines: each one's first process says it
        _fail(str(e), 1, loud=os.environ.get("LOCAL_RANK", "0") == "0")
    except (TrainingDiverged, DiskFull) as e:
        _fail(str(e), 1)
    except Interrupted as e:
        _fail(f"{e} ({signal.Signals(stopped_by[0]).name})", 128 + stopped_by[0], style="yellow", prefix="stopped")
    except KeyboardInterrupt:
        _fail(
            f"{script}: interrupted ({signal.Signals(stopped_by[0]).name}) before any result was written; "
            f"`dvc repro` runs this stage again",
            128 + stopped_by[0],
            style="yellow",
            prefix="stopped",
        )
    except (FileNotFoundError, ValueError) as e:
        _fail(f"{script}: {e}", 1)
    except OSError as e:
        if not out_of_space(e):
            raise
        _fail(
            f"{script}: no space left on device writing {e.filename or 'a file'}: free some space, then "
            f"`dvc repro` runs the stage again",
            1,
        )


def stage_paths(stage: str, item: str = "", dvc_yaml: str | Path = "dvc.yaml") -> dict[str, str]:
    """The `--<name> PATH` options of a stage's cmd in dvc.yaml (`item`: a foreach stage's, e.g. `original`),
    for tools that read what a stage reads (mae_exp.evaluation.tune): a path is written only in dvc.yaml."""
    spec = yaml.safe_load(Path(dvc_yaml).read_text())["stages"].get(stage)
    if spec is None:
        raise ValueError(f"{dvc_yaml} has no stage {stage!r}: run from the repository root")
    words = shlex.split(spec.get("do", spec)["cmd"].replace("${item}", item))
    return {w[2:]: v for w, v in zip(words, words[1:]) if w.startswith("--")}


def _fail(message: str, code: int, loud: bool = False, style: str = "bold red", prefix: str = "error") -> None:
    """One line on stderr (from rank 0 alone when several processes run, unless `loud`), then exit."""
    if loud:
        console.quiet = False
    console.print(f"[{style}]{prefix}:[/] {message}", highlight=False, soft_wrap=True)  # one line, never wrapped
    sys.exit(code)
