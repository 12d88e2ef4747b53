"""Failures that a stage reports as one line (cli.run_stage), apart from the code that raises them, so
that the stage runner imports none of the training code (dvc.yaml lists exactly what each stage imports).
ConfigError, for params.yaml, lives in config.py; a bad input file or value raises ValueError."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the params to change."""


class Interrupted(Exception):
    """A training run stopped by a signal; the message says where, and what resumes it."""


class DistributedError(RuntimeError):
    """The processes asked for by `<section>.processes` cannot run; the message names the key."""
