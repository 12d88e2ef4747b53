"""Failures that a stage reports as one line (cli.run_stage), apart from the code that raises them, so
that the stage runner imports none of the training code (dvc.yaml lists exactly what each stage imports).
ConfigError, for params.yaml, lives in config.py; a bad input file or value raises ValueError."""

import errno
import math
from contextlib import contextmanager


class TrainingDiverged(RuntimeError):
    """The loss diverged (see `diverged`); the message names the params to change."""


def diverged(loss: float, ceiling: float = math.inf) -> bool:
    """The one divergence rule (train.py's loop, probe.py's heads): a loss that is NaN or infinite, or above
    `ceiling`, where a learning run cannot reach one (the probe's cross-entropy starts near ln(classes))."""
    return not (math.isfinite(loss) and loss <= ceiling)


class Interrupted(Exception):
    """A training run stopped by a signal; the message says where, and what resumes it."""


class DiskFull(RuntimeError):
    """No space left while writing a file; the message names it (the atomic write left the old one intact)."""


def out_of_space(e: BaseException | None) -> bool:
    """Whether an exception, or one it was raised from or during, is a full disk."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


@contextmanager
def names_full_disk(path, left: str = ""):
    """A full disk inside the block (a write outside files.atomic_write: DVCLive's files, download's arrays)
    becomes DiskFull naming `path`; `left` says what was kept."""
    try:
        yield
    except DiskFull:
        raise  # named already, by the innermost block
    except Exception as e:
        if not out_of_space(e):
            raise
        raise DiskFull(
            f"no space left on device while writing {path}{left}: free some space, then `dvc repro` "
            f"runs the stage again"
        ) from None


class DistributedError(RuntimeError):
    """The processes asked for by `<section>.processes` cannot run; the message names the key."""
