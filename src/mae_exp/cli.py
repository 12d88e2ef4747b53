"""How a stage script runs: load and validate params first, turn known failures into one clear line."""

from __future__ import annotations

import sys

from .config import ConfigError, Params, load_params
from .progress import console


def run_stage(main, argv_names: tuple[str, ...] = (), choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """Parse positional args, load params.yaml, call main(params, *args); exit 2 on bad input."""
    from .pretrain import TrainingDiverged  # late: keeps `--help`-style failures fast

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
        main(params, *args)
    except TrainingDiverged as e:
        _fail(str(e), 1)
    except (FileNotFoundError, ValueError) as e:
        _fail(f"{script}: {e}", 1)


def _fail(message: str, code: int) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)
