"""How a stage script runs: load and validate params first, turn known failures into one clear line."""

from __future__ import annotations

import sys

from .config import ConfigError, Params, load_params
from .progress import console


def run_stage(main, argv_names: tuple[str, ...] = (), choices: dict[str, tuple[str, ...]] | None = None,
              section: str | None = None) -> None:
    """Parse positional args, load params.yaml, call main(params, *args); exit 2 on bad input.

    `section` (pretrain, finetune) names the params section whose `processes` the stage runs as: above 1,
    this process launches that many workers of the same command under torchrun and exits with their
    status; a worker joins the process group around main (see distributed.py).
    """
    from . import distributed  # late: keeps `--help`-style failures fast
    from .pretrain import TrainingDiverged

    args = sys.argv[1:]
    script = sys.argv[0]
    if len(args) != len(argv_names):
        _fail(f"usage: python {script} {' '.join(n.upper() for n in argv_names)}", 2)
    for name, value in zip(argv_names, args):
        allowed = (choices or {}).get(name)
        if allowed and value not in allowed:
            _fail(f"{script}: {name} must be one of {', '.join(allowed)}, got {value!r}", 2)
    try:
        params: Params = load_params("params.yaml")
    except ConfigError as e:
        _fail(f"invalid parameters: {e}", 2)
    try:
        if section is None:
            main(params, *args)
        else:
            cfg, key = getattr(params, section), f"{section}.processes"
            if cfg.processes > 1 and not distributed.under_torchrun():
                sys.exit(distributed.launch(cfg.processes, key, params.threads))
            with distributed.session(cfg.processes, key):
                main(params, *args)
    except distributed.DistributedError as e:  # can differ between machines: each one's first process says it
        _fail(str(e), 1, loud=distributed.local_rank() == 0)
    except TrainingDiverged as e:
        _fail(str(e), 1)
    except (FileNotFoundError, ValueError) as e:
        _fail(f"{script}: {e}", 1)


def _fail(message: str, code: int, loud: bool = False) -> None:
    """One line on stderr (from rank 0 alone when several processes run, unless `loud`), then exit."""
    if loud:
        console.quiet = False
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, never wrapped
    sys.exit(code)
