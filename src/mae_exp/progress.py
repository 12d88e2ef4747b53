"""One look for every long loop: a rich progress bar with rate and ETA, and a shared console."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True)
if not console.is_terminal:  # under `dvc repro` or CI: wide lines rather than 80-column wrapping
    console = Console(stderr=True, width=160)


def progress(**fields) -> Progress:
    """A rich Progress; extra `fields` (e.g. loss) are shown after the bar when a task sets them."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    return Progress(*columns, console=console, transient=False)
