"""More than one GPU: `torchrun` + DistributedDataParallel, on PyTorch's own `torch.distributed`.

    torchrun --standalone --nproc_per_node 8 train.py --config configs/cifar10-small.json --data ...

`start_distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and opens the process group: NCCL on CUDA (one GPU per process, GPU LOCAL_RANK), gloo
on CPU. Without WORLD_SIZE (a plain `python train.py`) no process group is created and every helper
here is a pass-through, so the single-process run is unchanged.

How TwinFlow's many student calls meet DDP (issue 15):
* One DDP forward per micro-step. A micro-step calls the student several times (base / real-velocity
  / adv rows, the one-step generator F(z, 1, 0) feeding the fake rows, the no_grad delta_v passes)
  and the EMA teacher under no_grad (image-free batches are drawn under no_grad before it).
  `LossModule` makes the whole objective ONE module call, and DDP wraps that module, so every
  student call of the micro-step is inside one DDP forward and its backward all-reduces each
  gradient once. The teacher is a separate copy (not a
  submodule: DDP never sees it); with EMA decay 0 the teacher IS the student, called directly under
  no_grad inside the same forward, which records no graph and so adds nothing to the reduction.
  A LoRA model's teacher (lora.py `LoRATeacher`) runs the student's own frozen base with the EMA's
  adapter and embedder values (`torch.func.functional_call`), also under no_grad: no graph either.
* Gradient accumulation: `micro_step_sync` puts every micro-step but the last under `no_sync()`,
  so the gradients are averaged across processes once per optimizer step.
* find_unused_parameters=False: every trainable parameter enters every student call with
  gradient. `DiT.condition` adds t_emb(|t|), t_tgt_emb(|t_tgt|) * (t - t_tgt) (gated to 0 on the
  diagonal, but still in the graph), sign_emb(t < 0) (one table used by both branches) and the label
  table (one parameter, null row included) on every row, and every layer after it runs on every row.
  A parameter left out would stop the next step with DDP's "Expected to have finished reduction"
  error; tests/test_distributed.py trains flow matching, both TwinFlow recipes and gradient
  checkpointing (use_reentrant=False: no "marked ready twice") for several steps, and shows that an
  unused parameter is caught. LoRA (`model_type: lora`): DDP reduces only the tensors that require
  grad, the adapters (on layers every row passes) and the TwinFlow embedders; the frozen base is
  neither all-reduced nor given a gradient (tested with train.py and on the library pieces).
* No buffer broadcast in each forward (broadcast_buffers=False): the model has no buffer that
  training changes (no batch norm; the position table is a frozen parameter, equal on every rank).

Randomness: every rank seeds its own generators with `rank_seed(seed, rank)`; rank 0 uses `seed`
itself, so `torchrun --nproc_per_node 1` draws exactly what `python train.py` draws. The model is
initialised from `seed` on every rank (a LoRA run: the base file, and the adapters' A from `seed`),
so every rank starts with the same weights and builds the same EMA teacher from them; train.py
builds the teacher before the DDP wrap, whose broadcast of rank 0's weights then changes nothing.
The gradients after the all-reduce, hence the weights and the teacher, stay equal on all ranks.

Failures: `guarded()` runs a block on every rank and then agrees, in one all-reduce of a flag, on
whether any rank raised. If one did, every rank stops: the lowest failing rank re-raises its own
error, every other rank raises `PeerFailed` naming it, and train.py prints it once (on rank 0).
train.py guards the batch draw, then the forward and the finiteness check (before the backward's
all-reduce), then rank 0's checkpoint / validation work, so no rank is left waiting in a collective
that a failed rank will never join.
Time convention: not used here (see twinflow_min/transport.py).
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from twinflow_min.checks import INT64_MAX, resolve_device
from twinflow_min.data_sources import SetupError

RANK_SEED_STRIDE = 0x9E3779B97F4A7C15  # 2^64 / golden ratio (SplitMix64's increment), odd
SEED_MODULUS = INT64_MAX + 1  # rank seeds stay in [0, 2^63), like every seed of a run
TIMEOUT = datetime.timedelta(minutes=30)  # a collective that waits longer fails instead of hanging
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
RANK_PREFIX = "rng.rank{rank}."  # checkpoint keys of rank r > 0's generator states
# No buffer broadcast in the forward (module docstring); newer torch spells it forward_sync_buffers
_DDP_KEYWORDS = inspect.signature(DistributedDataParallel).parameters
NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_KEYWORDS
                          else {"broadcast_buffers": False})


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s generators: (seed + rank * 0x9E3779B97F4A7C15) mod 2^63.

    Rank 0 keeps `seed` exactly (a 1-process torchrun run equals `python train.py`); other ranks are
    spread over the 63-bit range, so rank 1 of seed s is not rank 0 of seed s + 1.
    """
    return (seed + rank * RANK_SEED_STRIDE) % SEED_MODULUS


class PeerFailed(RuntimeError):
    """Another rank raised: `rank`, the error's class name `kind` and its one-line `message`."""

    agreed_by_all_ranks = True

    def __init__(self, rank: int, kind: str, message: str):
        super().__init__(f"rank {rank}: {message}")
        self.rank, self.kind, self.message = rank, kind, message


def reported_by_rank_0(error: BaseException) -> bool:
    """True for an error all ranks stopped on through `guarded()`: rank 0 alone prints it."""
    return getattr(error, "agreed_by_all_ranks", False)


@dataclass(frozen=True)
class DistributedRun:
    """This process's place in the run. `enabled` is False for a plain `python train.py`.

    rank / world_size: over all nodes; local_rank: on this node (its GPU index); device: this
    process's device.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs, plots, validation, evaluation."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """This rank's seed for its training and data generators (`rank_seed`)."""
        return rank_seed(seed, self.rank)

    def any(self, flag: bool) -> bool:
        """True on all ranks when `flag` is True on any rank (one all-reduce; all call it)."""
        if not self.enabled:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def gather(self, value) -> list:
        """[value of rank 0, value of rank 1, ...] on every rank (picklable values; all call it)."""
        if not self.enabled:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (one all-reduce; all call it with the same keys)."""
        if not self.enabled:
            return values
        total = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return dict(zip(values, (total / self.world_size).tolist()))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(device_ids=[self.local_rank] if self.device.type == "cuda" else None)

    @contextlib.contextmanager
    def guarded(self):
        """Run the block on every rank, then stop every rank if any of them raised (see module doc).

        Every rank must enter the same guarded blocks in the same order. Off torchrun, errors pass
        through untouched. KeyboardInterrupt is not caught (torchrun stops the other processes).
        """
        if not self.enabled:
            yield
            return
        error = None
        try:
            yield
        except Exception as caught:  # any error of this rank; re-raised below after the agreement
            error = caught
        if not self.any(error is not None):
            return
        report = None if error is None else (type(error).__name__, first_line(error))
        reports = self.gather(report)
        failed = next(rank for rank, entry in enumerate(reports) if entry is not None)
        if failed == self.rank:
            error.agreed_by_all_ranks = True  # rank 0 reports it (PeerFailed) unless it is rank 0
            raise error
        raise PeerFailed(failed, *reports[failed]) from None

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def launched_rank(environ=None) -> int:
    """RANK from torchrun's environment (0 when absent or malformed: start_distributed says so)."""
    value = (os.environ if environ is None else environ).get("RANK", "0").strip()
    return int(value) if value.isdigit() else 0


@contextlib.contextmanager
def stdout_of_rank_0_only():
    """Ranks > 0 print nothing to stdout (rank 0 alone logs); stderr stays, for tracebacks."""
    if launched_rank() == 0:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def _environment_int(environ, key: str) -> int:
    value = environ.get(key, "")
    if not value.strip().isdigit():
        raise SetupError(f"{key}={value!r} in the environment is not a non-negative integer; "
                         f"start train.py with torchrun, which sets it")
    return int(value)


def start_distributed(device_name: str, environ=None) -> DistributedRun:
    """This process's DistributedRun for the configured `device_name` ('auto', 'cpu', 'cuda', ...).

    Without WORLD_SIZE in the environment: no process group, `device_name` resolved as usual. Under
    torchrun: CUDA ('auto' with a GPU, or 'cuda') takes GPU LOCAL_RANK with NCCL; 'cpu' (or 'auto'
    without a GPU) uses gloo. Raises SetupError (one line) for a device that cannot be shared this
    way (an explicit 'cuda:N', mps), more processes on a node than it has GPUs, or a malformed
    environment.
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        try:
            return DistributedRun(device=resolve_device(device_name))
        except ValueError as error:
            raise SetupError(str(error)) from None
    missing = [key for key in ENV_KEYS if key not in environ]
    if missing:
        raise SetupError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start train.py with "
                         f"torchrun --nproc_per_node N train.py ..., which sets all of them")
    rank, world_size = _environment_int(environ, "RANK"), _environment_int(environ, "WORLD_SIZE")
    local_rank = _environment_int(environ, "LOCAL_RANK")
    if world_size < 1:
        raise SetupError(f"WORLD_SIZE={world_size}: start train.py with torchrun "
                         f"--nproc_per_node N")
    if rank >= world_size:
        raise SetupError(f"RANK={rank} is not below WORLD_SIZE={world_size}; start with torchrun")
    device = _distributed_device(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=TIMEOUT)
    return DistributedRun(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                          enabled=True)


def _distributed_device(device_name: str, local_rank: int) -> torch.device:
    """GPU LOCAL_RANK for 'auto' (with CUDA) and 'cuda'; the CPU for 'cpu', 'auto' without CUDA."""
    if device_name == "cpu":
        return torch.device("cpu")
    if device_name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device_name not in ("auto", "cuda"):
        raise SetupError(f"device {device_name!r} under torchrun: each process takes the GPU of "
                         f"its LOCAL_RANK, so use --device cuda (or auto); --device cpu trains "
                         f"with gloo")
    count = torch.cuda.device_count()
    if count == 0:
        raise SetupError("device 'cuda' under torchrun, but this machine has no CUDA GPU; use "
                         "--device cpu (gloo)")
    if local_rank >= count:
        raise SetupError(f"LOCAL_RANK={local_rank} but this node has {count} GPU(s): start at most "
                         f"torchrun --nproc_per_node {count}")
    return torch.device("cuda", local_rank)


# --------------------------------------------------------------------------------------------
# The loss as one module call
# --------------------------------------------------------------------------------------------

class LossModule(nn.Module):
    """One micro-step's objective as one module call: DDP sees its student calls in one forward.

    `objective(student, teacher, x, y, step=, micro_step=)` is an objective of
    twinflow_min/objective.py (or any callable of that signature); it returns the named loss terms.
    The student is the only submodule (its parameters are what DDP averages); the teacher network is
    passed in per call because it is not trained (it may be a new object after twinflow_start_step).
    """

    def __init__(self, student: nn.Module, objective):
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(self, teacher: nn.Module, x: Tensor, y, step: int, micro_step: int) -> dict:
        return self.objective(self.student, teacher, x, y, step=step, micro_step=micro_step)


def wrap_loss(student: nn.Module, objective, run: DistributedRun) -> nn.Module:
    """LossModule(student, objective), inside DistributedDataParallel when the run is distributed.

    Call it as `terms = loss_module(teacher, x, y, step, micro_step)`; gradients land on the
    student's own parameters (averaged over ranks after the last micro-step's backward).
    """
    module = LossModule(student, objective)
    if not run.enabled:
        return module
    device_ids = [run.local_rank] if run.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=False,
                                   **NO_FORWARD_BUFFER_SYNC)


def unwrap(loss_module: nn.Module) -> LossModule:
    """The LossModule inside a DDP wrapper (or the LossModule itself): `.student`, `.objective`."""
    if isinstance(loss_module, DistributedDataParallel):
        return loss_module.module
    return loss_module


def micro_step_sync(loss_module: nn.Module, micro_step: int, count: int):
    """Context of micro-step `micro_step` of `count`: no gradient all-reduce but on the last one.

    Wrap the micro-step's forward AND backward in it. Plain (non-DDP) modules: a null context.
    """
    last = micro_step == count - 1
    if isinstance(loss_module, DistributedDataParallel) and not last:
        return loss_module.no_sync()
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Every rank's generator states in one checkpoint
# --------------------------------------------------------------------------------------------

def gather_rank_states(run: DistributedRun, rng_states: dict[str, Tensor],
                       data_state: dict | None) -> tuple[dict[str, Tensor], list]:
    """(checkpoint RNG tensors of every rank, [data state of rank 0, rank 1, ...]); all ranks call.

    Rank 0's generator states keep their single-process keys ('rng.train', 'rng.global_cpu', ...);
    rank r > 0's are stored under 'rng.rank<r>.<name>'. A 1-process run writes exactly the
    single-process keys.
    """
    gathered = run.gather(({key: value.cpu() for key, value in rng_states.items()}, data_state))
    tensors = dict(gathered[0][0])
    for rank, (states, _) in enumerate(gathered[1:], start=1):
        prefix = RANK_PREFIX.format(rank=rank)
        tensors.update({prefix + key.removeprefix("rng."): value for key, value in states.items()})
    return tensors, [data for _, data in gathered]


def rank_rng_states(saved: dict[str, Tensor], rank: int) -> dict[str, Tensor]:
    """Rank `rank`'s generator states from a checkpoint's 'rng.*' tensors, single-process keys.

    A rank with no saved states gets {} (`train_state.restore_rng_states` then names the missing
    generator).
    """
    if rank == 0:
        return {key: value for key, value in saved.items() if not key.startswith("rng.rank")}
    prefix = RANK_PREFIX.format(rank=rank)
    return {"rng." + key.removeprefix(prefix): value for key, value in saved.items()
            if key.startswith(prefix)}


def check_world_size(saved_world_size: int, run: DistributedRun, checkpoint) -> None:
    """Refuse to resume a run with a different number of processes (one line saying how many).

    The per-rank data order and noise of a run are tied to its world size, so a resume with another
    one could not continue the run exactly.
    """
    if saved_world_size == run.world_size:
        return
    how = ("python train.py --resume ..." if saved_world_size == 1
           else f"torchrun --nproc_per_node {saved_world_size} train.py --resume ... (or that many "
                f"processes in total over the nodes)")
    raise SetupError(f"--resume {checkpoint}: the run was trained with {saved_world_size} "
                     f"process(es), this is {run.world_size}; resume with the same number: {how}")
