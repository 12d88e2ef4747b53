"""Several processes, one code path: torchrun launch, the process group, rank-0-only files, batch shards.

`pretrain.processes` / `finetune.processes` = N > 1 runs a stage as N processes with
DistributedDataParallel: nccl with one GPU per process (cuda:LOCAL_RANK), gloo on CPUs.

- Launch. The stage command stays `python stages/<stage>.py ...`. Started that way with N > 1, the
  process becomes torchrun (torch.distributed.run's own parser and elastic agent, in-process:
  `--standalone --nproc-per-node N` plus the same script and arguments), waits for the N workers and
  exits with their status. Started by torchrun (WORLD_SIZE and LOCAL_RANK set, e.g. on several nodes),
  the process is a worker: it joins the group, and WORLD_SIZE must equal N.
- Same numbers as one process. `batch_size` is the global batch. Every rank draws the random numbers of
  the whole global batch (epoch order, crops, flips, masks) from the same seeded generators and computes
  its own rows `shard(batch)`; DDP averages the gradients. N processes therefore follow the one-process
  run up to the order of float reductions.
- Only rank 0 writes files and prints (the console of the other ranks is quiet); every rank reads what
  rank 0 read through `from_rank0`, so nothing but rank 0 touches the run's files.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist

from ..plumbing.errors import DistributedError
from ..plumbing.progress import console

# Longest wait of a collective (and of joining the group) before a rank gives up: a rank that died or a
# rendezvous that never completes ends the run instead of hanging it. Rank 0 reading a checkpoint while
# the others wait is seconds, far below this.
TIMEOUT = datetime.timedelta(minutes=5)
BACKEND_ENV = "MAE_DIST_BACKEND"  # override the backend (gloo | nccl); default: nccl on CUDA, gloo on CPU


# --------------------------------------------------------------------------- where this process stands


def under_torchrun() -> bool:
    """True in a worker started by torchrun (or any launcher that sets torch's env:// variables, as
    `from_slurm` does for a task that `srun` started)."""
    from_slurm()
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def from_slurm(env=os.environ) -> None:
    """A task of a several-task `srun` step, where torchrun's variables are absent: set them from SLURM's,
    so that the worker path below is torchrun's. RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE from
    SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID / this node's count in SLURM_STEP_TASKS_PER_NODE;
    MASTER_ADDR the step's first host (`scontrol show hostnames`), MASTER_PORT one per job unless set.
    Only `srun` sets SLURM_STEP_NUM_TASKS: a batch script and a one-task step stay one plain process."""
    if "WORLD_SIZE" in env or int(env.get("SLURM_STEP_NUM_TASKS", "1")) < 2:
        return
    per_node = slurm_tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"])
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_STEP_NUM_TASKS"]
    env["LOCAL_RANK"] = env["SLURM_LOCALID"]
    env["LOCAL_WORLD_SIZE"] = str(per_node[int(env.get("SLURM_NODEID", 0))])
    env.setdefault("MASTER_ADDR", first_host(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]))
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000))


def slurm_tasks_per_node(spec: str) -> list[int]:
    """SLURM's compressed count per node, "2(x3),1" -> [2, 2, 2, 1]."""
    counts = []
    for part in spec.split(","):
        n, _, times = part.partition("(x")
        counts += [int(n)] * int(times.rstrip(")") or 1)
    return counts


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ("gpu[03-05,07]" -> "gpu03"), as `scontrol show hostnames` expands it."""
    import subprocess

    try:
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as e:
        raise DistributedError(
            f"srun started this task, but `scontrol show hostnames {nodelist}` failed ({e}); "
            "set MASTER_ADDR to the first node's host name"
        ) from None
    return hosts[0]


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_rank0() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if under_torchrun() else 0


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if under_torchrun() else 1


def backend() -> str:
    return os.environ.get(BACKEND_ENV) or ("nccl" if torch.cuda.is_available() else "gloo")


def device() -> torch.device:
    """This process's device: its own GPU (cuda:LOCAL_RANK) on a CUDA machine, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def cpu_threads(threads: int) -> int:
    """`threads` per process, or (0) this machine's cores shared evenly by its processes."""
    return threads or max(1, (os.cpu_count() or 1) // local_world_size())


def describe(dev: torch.device, threads: int) -> str:
    """Where a stage computes, for its start-up line: `cpu, 2 CPU threads` / `cuda:0, 2 processes`."""
    n = torch.get_num_threads()
    where = f"{dev}, {n} CPU thread{'s' if n > 1 else ''}" + (" per process" if world_size() > 1 else "")
    return where + (f", {world_size()} processes" if world_size() > 1 else "")


# --------------------------------------------------------------------------- start and stop


def launch(processes: int, key: str, threads: int) -> int:
    """Run this very command (sys.argv) as `processes` workers under torchrun on this machine; return
    the exit status for this process (0, or the first failed worker's)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    _check_gpus(processes, processes, key, f"set {key} to the number of GPUs")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, threads or (os.cpu_count() or 1) // processes)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # failures: one line, below
    argv = ["--standalone", "--nproc-per-node", str(processes), sys.argv[0], *sys.argv[1:]]
    console.print(
        f"{key}: {processes} -> torchrun {' '.join(argv)} ({backend()}, "
        f"{os.environ['OMP_NUM_THREADS']} CPU thread(s) per process)",
        highlight=False,
    )
    try:
        torchrun.run(torchrun.parse_args(argv))
    except ChildFailedError as e:
        failed_rank, failure = e.get_first_failure()
        code = failure.exitcode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        console.print(f"[bold red]error:[/] {key}: worker rank {failed_rank} of {processes} {how}", highlight=False)
        return 128 - code if code < 0 else code
    except SignalException as e:  # this process was stopped (Ctrl-C, dvc killed); the workers were too
        console.print(f"[bold red]error:[/] {key}: stopped by {e.sigval.name}", highlight=False)
        return 128 + int(e.sigval)
    except Exception as e:  # the rendezvous or the agent itself failed
        raise DistributedError(
            f"{key}: {processes} processes asked for, but torchrun could not start them "
            f"({_first_line(e)}); set {key}: 1 to run in one process"
        ) from None
    return 0


def processes(section: str, main):
    """Stage entry for a training stage: main(params, *args, **paths) in `<section>.processes` processes. Started as
    `python stages/...` with N > 1, this process launches N workers of the same command under torchrun and
    exits with their status; a worker (or N = 1) joins the process group around main."""

    def run(params, *args, **paths):
        n, key = getattr(params, section).processes, f"{section}.processes"
        if n > 1 and not under_torchrun():
            sys.exit(launch(n, key, params.threads))
        with session(n, key):
            return main(params, *args, **paths)

    return run


@contextmanager
def session(processes: int, key: str):
    """In a torchrun worker: join the process group (checked by one collective), leave it at the end.
    In a plain process (one process): nothing."""
    if not under_torchrun():
        yield
        return
    _die_with_launcher()
    if int(os.environ.get("RANK", 0)) != 0:
        console.quiet = True  # rank 0 alone prints
    world = int(os.environ["WORLD_SIZE"])
    if world != processes:
        raise DistributedError(
            f"{key} is {processes}, but torchrun started {world} processes (WORLD_SIZE); "
            f"set {key}: {world}, the number of processes over all nodes"
        )
    name = backend()
    _check_gpus(local_world_size(), processes, key, "start one process per GPU (torchrun --nproc-per-node)")
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    try:
        dist.init_process_group(name, timeout=TIMEOUT)
        dist.all_reduce(torch.zeros(1, device=device()))  # a backend that cannot communicate fails here
    except Exception as e:
        raise DistributedError(
            f"{key}: {processes} processes asked for, but the {name} backend could not start "
            f"({_first_line(e)}); set {key}: 1, or fix the rendezvous (torchrun's --rdzv-endpoint / "
            f"MASTER_ADDR:MASTER_PORT must be reachable and free)"
        ) from None
    try:
        yield
    finally:
        dist.destroy_process_group()


def _die_with_launcher() -> None:
    """torchrun starts its workers in a session of their own, so a SIGKILL to the stage (and to `dvc repro`'s
    process group) would leave them training, and finishing, behind the back of the run that resumes.
    Linux: ask the kernel to SIGKILL this worker when its launcher dies."""
    if sys.platform != "linux":
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the request was in place
        os.kill(os.getpid(), signal.SIGKILL)


def _check_gpus(per_node: int, processes: int, key: str, fix: str) -> None:
    if backend() != "nccl":
        return
    gpus = torch.cuda.device_count()
    if per_node > gpus:
        raise DistributedError(
            f"{key}: {processes} processes on the nccl backend need one GPU each, {per_node} on this machine, "
            f"which has {gpus}; "
            + (fix if gpus else f"set {key}: 1 on a machine without GPUs")
            + (f", or unset {BACKEND_ENV} (nccl) to use gloo" if BACKEND_ENV in os.environ else "")
        )


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


# --------------------------------------------------------------------------- inside the training loops


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel over the ranks (gradients averaged in backward); the model itself alone."""
    if world_size() == 1:
        return model
    ids = [local_rank()] if torch.cuda.is_available() else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard(batch_size: int) -> slice:
    """This rank's rows of a global batch: equal, contiguous slices in rank order."""
    per_rank = batch_size // world_size()
    return slice(rank() * per_rank, (rank() + 1) * per_rank)


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a tensor, identical on every rank (a new tensor; `t` itself with one)."""
    if world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world_size()


def total(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a tensor, identical on every rank (a new tensor; `t` itself with one)."""
    if world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, in rank order: the global batch, with gradients flowing back to each shard."""
    return t if world_size() == 1 else _GatherRows.apply(t)


class _GatherRows(torch.autograd.Function):
    """all_gather with autograd. Each rank computes the same loss on the gathered rows, so a row's
    gradient is the sum of every rank's gradient for it (all_reduce); DDP's average then gives exactly
    the one-process gradient. (torch.distributed.nn.functional.all_gather does the same; it is deprecated.)"""

    @staticmethod
    def forward(ctx, t):
        parts = [torch.empty_like(t) for _ in range(world_size())]
        dist.all_gather(parts, t.contiguous())
        ctx.rows = t.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[rank() * ctx.rows : (rank() + 1) * ctx.rows]


def check_same_weights(model: torch.nn.Module, what: str) -> None:
    """Every rank must end with rank 0's weights (DDP applies the same averaged gradients everywhere); a
    checksum per parameter, compared exactly, catches a rank that drifted (a bug, never rounding)."""
    if world_size() == 1:
        return
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(device())
    mine = sums.clone()
    dist.broadcast(sums, src=0)
    if not torch.equal(sums, mine):
        raise DistributedError(f"{what}: the weights of rank {rank()} differ from rank 0's after training")


def from_rank0(obj):
    """Rank 0's `obj` on every rank (pickled; for checkpoints, which only rank 0 reads from disk)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device() if backend() == "nccl" else None)
    return box[0]
