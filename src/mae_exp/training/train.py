"""The one training loop, shared by pre-training and fine-tuning.

Every step: the learning rate from linear warmup + half-cosine (times each parameter group's `lr_scale`,
which is how fine-tuning applies MAE's layer-wise decay), the forward under autocast, a GradScaler
(active for fp16 only), backward, AdamW. Around it:

- resumable state every `checkpoint_every` epochs in `state_path` (model, optimiser, scaler, every random
  generator, what was logged), written atomically with its digest, outside DVC's declared outputs (see
  pretrain.py); the state before it is kept as `prev.pt`. A run killed at any point restarts from it and
  draws exactly what the uninterrupted run would; a state that is unreadable or fails its digest is set
  aside (`*.corrupt`) with one line, and the run falls back to the previous state, or starts afresh;
- a divergence guard (errors.diverged, the rule probe.py applies too): the loss is read on the host every
  LOG_EVERY steps (each read synchronises the device), and a non-finite value stops the run with the keys
  to change;
- DVCLive (rank 0): every logged step's terms and learning rate, every epoch's `after_epoch` metrics;
- Ctrl-C / SIGTERM: one line saying where it stopped and from where `dvc repro` resumes.

With several processes (distributed.py) this loop runs in each; rank 0 alone writes files and logs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints import CorruptCheckpoint, read_checkpoint, save_checkpoint
from ..plumbing.errors import Interrupted, TrainingDiverged, diverged
from ..plumbing.progress import console, progress
from . import distributed
from .optim import warmup_cosine
from .runtime import autocast, batches

LOG_EVERY = 10  # steps between reads of the loss on the host


@dataclass
class Schedule:
    epochs: int
    steps_per_epoch: int
    warmup_steps: int
    peak_lr: float
    checkpoint_every: int
    total_steps: int | None = None  # stop here, inside the last epoch (a variant's steps_factor); None: every epoch

    @property
    def total(self) -> int:
        return self.total_steps or self.epochs * self.steps_per_epoch

    def lr(self, step: int) -> float:
        return warmup_cosine(step, self.total, self.warmup_steps, self.peak_lr)


# step(idx, step, log) -> (loss to minimise, {name: value} to log; only needed when `log`)
StepFn = Callable[[torch.Tensor, int, bool], "tuple[torch.Tensor, dict]"]


class Trainer:
    def __init__(
        self,
        name: str,
        section: str,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        state_path: Path,
        generators: dict[str, torch.Generator],
        live=None,
    ):
        self.name, self.section = name, section  # "pretrain original", "pretrain" (named in messages)
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.device, self.amp_dtype = device, amp_dtype
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.state_path, self.generators, self.live = Path(state_path), generators, live
        self.history: list[dict] = []  # one row per epoch
        self.logged: list[dict] = []  # every row given to DVCLive, replayed after a resume
        self.start_epoch, self.elapsed = 0, 0.0
        self.saved_epoch = 0  # epoch of the resumable state on disk (0: none)
        self.resumed_from: Path | None = None  # last.pt, or prev.pt when last.pt was set aside

    # ------------------------------------------------------------------ resumable state

    def begin(self, description: str) -> None:
        """Resume from the saved state if there is one, and say so; else print what is about to run."""
        self._drop_other_states()
        if self.restore():
            console.print(
                f"[green]resuming {self.name} from epoch {self.start_epoch + 1}/{self.schedule.epochs}[/] "
                f"({self.resumed_from})",
                highlight=False,
                soft_wrap=True,
            )
        else:
            console.print(f"{self.name}: {description}", highlight=False, soft_wrap=True)

    def _drop_other_states(self) -> None:
        """States that other params left in this stage's scratch/ (a run since finished, or DVC restored
        its outputs from the run-cache): nothing resumes them now, they only hold disk."""
        if not distributed.is_rank0() or not self.state_path.parent.parent.is_dir():
            return
        others = [d for d in self.state_path.parent.parent.iterdir() if d.is_dir() and d != self.state_path.parent]
        for d in others:
            shutil.rmtree(d, ignore_errors=True)
        if others:
            console.print(
                f"{self.name}: removed the resumable state of {len(others)} other run(s) in "
                f"{self.state_path.parent.parent}",
                highlight=False,
                soft_wrap=True,
            )

    @property
    def previous_path(self) -> Path:
        return self.state_path.with_name("prev.pt")

    def _read_state(self) -> dict | None:
        """The newest resumable state that passes its digest; a bad one is set aside, never used."""
        for path in (self.state_path, self.previous_path):
            if not path.exists():
                continue
            try:
                state = read_checkpoint(path, "set aside")
                self.resumed_from = path
                return state
            except CorruptCheckpoint as e:
                path.replace(path.with_name(path.name + ".corrupt"))  # kept to inspect, out of the way
                fallback = "the previous state" if path == self.state_path else "a fresh start"
                console.print(
                    f"[yellow]warning:[/] {e} as {path.name}.corrupt; {self.name} falls back to {fallback}",
                    highlight=False,
                    soft_wrap=True,
                )
        return None

    def restore(self) -> bool:
        """Load the resumable state if there is one (rank 0 reads it and hands it to the others)."""
        state = self._read_state() if distributed.is_rank0() else None
        state = distributed.from_rank0(state)
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for key, gen in self.generators.items():
            gen.set_state(state["generators"][key].to(gen.get_state().device))
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history, self.logged = state["history"], state["logged"]
        self.start_epoch, self.elapsed = state["epoch"], state["elapsed"]
        self.saved_epoch = self.start_epoch
        if self.live is not None:
            for row in self.logged:  # DVC removed the stage's outputs before this run: log them again
                self._log(row, record=False)
        return True

    def _save(self, epoch: int) -> None:
        if self.state_path.exists():  # keep one good state behind, in case the newest is damaged later
            self.state_path.replace(self.previous_path)
        save_checkpoint(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "generators": {k: g.get_state() for k, g in self.generators.items()},
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "history": self.history,
                "logged": self.logged,
                "epoch": epoch,
                "elapsed": self.elapsed,
            },
            self.state_path,
        )
        self.saved_epoch = epoch

    # ------------------------------------------------------------------ the loop

    def fit(
        self, n: int, batch_size: int, step: StepFn, after_epoch: Callable[[int], dict] | None = None
    ) -> list[dict]:
        """Train on `n` items in batches of `batch_size` (the global batch) drawn by the generator
        "order"; `step` computes the loss of one batch, `after_epoch` returns metrics to log (validation)."""
        s = self.schedule
        self.model.train()
        where = (0, 0)
        try:
            with progress(loss=True) as bar:
                done = self.start_epoch * s.steps_per_epoch
                task = bar.add_task(self.name, total=s.total, completed=done, offset=done, loss="-")
                for epoch in range(self.start_epoch, s.epochs):
                    t0, rows = time.perf_counter(), []
                    for i, idx in enumerate(batches(n, batch_size, self.generators["order"])):
                        where = (epoch, i)
                        global_step = epoch * s.steps_per_epoch + i
                        if global_step == s.total:
                            break
                        lr = s.lr(global_step)
                        for group in self.optimizer.param_groups:
                            group["lr"] = lr * group.get("lr_scale", 1.0)
                        log = (i + 1) % LOG_EVERY == 0 or i + 1 == s.steps_per_epoch or global_step + 1 == s.total
                        with autocast(self.device, self.amp_dtype):
                            loss, terms = step(idx, global_step, log)
                        self.optimizer.zero_grad(set_to_none=True)
                        self.scaler.scale(loss).backward()
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                        if log:
                            row = self._read(terms, epoch, i)
                            rows.append(row)
                            self._log({"step": global_step + 1, **row, "lr": lr})
                            bar.update(task, loss=f"{row['loss']:.4f}")
                        bar.update(task, completed=global_step + 1)
                    seconds = time.perf_counter() - t0
                    self.elapsed += seconds
                    self.model.eval()
                    extra = after_epoch(epoch) if after_epoch else {}
                    self.model.train()
                    if extra:
                        self._log({"step": (epoch + 1) * s.steps_per_epoch, **extra})
                    stepped = min(s.steps_per_epoch, s.total - epoch * s.steps_per_epoch)  # the last may be short
                    self._end_epoch(epoch, rows, extra, stepped * batch_size / seconds, bar)
        except KeyboardInterrupt:
            raise Interrupted(self._where(*where)) from None
        return self.history

    def _read(self, terms: dict, epoch: int, i: int) -> dict:
        """The logged values as floats: the mean over processes, checked finite."""
        names = list(terms)
        values = distributed.mean(
            torch.stack([torch.as_tensor(terms[k], device=self.device, dtype=torch.float32) for k in names])
        ).tolist()
        if any(diverged(v) for v in values):
            kept = (
                f"the last checkpoint is kept at {self.state_path}"
                if self.state_path.exists()
                else "no checkpoint was written yet"
            )
            raise TrainingDiverged(
                f"{self.name}: the loss became {values[0]} at epoch {epoch + 1}, step {i + 1}; {kept}. Lower "
                f"{self.section}.base_lr, raise {self.section}.warmup_epochs or use {self.section}.precision: fp32."
            )
        return dict(zip(names, values))

    def _log(self, row: dict, record: bool = True) -> None:
        if record:
            self.logged.append(row)
        if self.live is None:
            return
        self.live.step = row["step"]
        for key, value in row.items():
            if key != "step":
                self.live.log_metric(key, value)
        self.live.make_summary()

    def _end_epoch(self, epoch: int, rows: list[dict], extra: dict, images_per_s: float, bar) -> None:
        s = self.schedule
        means = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}
        self.history.append(
            {
                "epoch": epoch + 1,
                **means,
                **extra,
                "lr": self.optimizer.param_groups[0]["lr"],
                "images_per_s": images_per_s,
            }
        )
        shown = ", ".join(f"{k} {v:.4g}" for k, v in {**means, **extra}.items())
        bar.console.print(
            f"{self.name} epoch {epoch + 1}/{s.epochs}: {shown}, {images_per_s:,.0f} img/s",
            highlight=False,
            soft_wrap=True,
        )
        if (epoch + 1) % s.checkpoint_every == 0 and epoch + 1 < s.epochs and distributed.is_rank0():
            self._save(epoch + 1)

    def _where(self, epoch: int, i: int) -> str:
        s, last = self.schedule, self.saved_epoch
        resume = f"`dvc repro` resumes it from epoch {last + 1}" if last else "`dvc repro` starts it again"
        return (
            f"{self.name}: interrupted at epoch {epoch + 1}/{s.epochs}, step {i + 1}/{s.steps_per_epoch}; "
            f"{resume} ({'checkpoint ' + str(self.state_path) if last else 'no checkpoint yet'})"
        )

    def finish(self) -> None:
        """The run is complete and its declared outputs written: the resumable state is no longer needed."""
        if distributed.is_rank0():
            for path in self.state_path.parent.glob("*.pt*"):  # the states, and any set aside as corrupt
                path.unlink(missing_ok=True)
            try:
                self.state_path.parent.rmdir()
            except OSError:
                pass
