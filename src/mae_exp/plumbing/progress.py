"""One look for every long loop: a rich progress bar with rate and ETA, and a shared console."""

from __future__ import annotations

from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

console = Console(stderr=True)
if not console.is_terminal:  # under `dvc repro` or CI: wide lines rather than 80-column wrapping
    console = Console(stderr=True, width=160)


class EtaColumn(ProgressColumn):
    """Time left from the average rate since the task started. rich's own column waits for a sliding
    window of samples and shows -:--:-- for minutes when updates are slow (a resumed run counts only
    the steps done since it resumed: the task's `offset` field)."""

    def render(self, task) -> Text:
        done = task.completed - task.fields.get("offset", 0)
        if task.total is None or task.elapsed is None or done <= 0:
            return Text("eta -:--:--", style="progress.remaining")
        left = task.elapsed / done * (task.total - task.completed)
        return Text(f"eta {timedelta(seconds=round(left))}", style="progress.remaining")


def progress(**fields) -> Progress:
    """A rich Progress; extra `fields` (e.g. loss) are shown after the bar when a task sets them."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        EtaColumn(),
    ]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    return Progress(*columns, console=console, transient=False)
