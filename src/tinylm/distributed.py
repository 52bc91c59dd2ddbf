"""Data-parallel training across processes: torchrun's environment, one batch split N ways.

``torchrun --nproc_per_node N -m tinylm train ...`` starts N copies of the
command and tells each its place in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, the rendezvous address). Every process
builds the same model from the same seed and draws the same batches from
the same RNG stream: the run has one stream whatever the number of
processes. Each process then takes its share of every batch's rows,
computes the gradient of its share of the loss, and an all-reduce (gloo on
CPUs, NCCL on GPUs, through ``torch.distributed``) sums the shares, so that
every process holds the gradient of the whole batch and takes the same
update. A 2-process run of batch B therefore computes what a 1-process run
of batch B computes, up to the order of a sum.

The shares are weighted by what they score: a part holding ``n`` of the
batch's ``N`` scored targets contributes ``n / N`` times its mean loss, so
the sum is the batch's mean loss exactly, also for sequence rows whose
padding is not scored. ``--grad-accum K`` splits a process's share again
into K micro-batches whose gradients add up before the update, the same
sum in K passes of a smaller memory footprint.

The gradients are reduced as one flat buffer, as ``DistributedDataParallel``
reduces its buckets; it is done here rather than by wrapping the network in
``DistributedDataParallel`` because the raw-tensor backend has no
``nn.Module`` to wrap, and one code path keeps both torch backends' numbers
equal. Process 0 alone writes the run directory and prints; the others
compute. Before each step the processes agree whether any of them was
asked to stop (SIGINT, SIGTERM), so that all stop before the same step.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from tinylm import pytorch
from tinylm.errors import ConfigError, TinylmError

class ProcessFailed(TinylmError):
    """Another process of a multi-process run stopped; its own message says why."""


@dataclass(frozen=True)
class World:
    """This process's place in a run: ``rank`` of ``size`` processes (one: ``World()``)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is the process that writes and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def __str__(self) -> str:
        return f"process {self.rank} of {self.size}"


def from_environment(env: Any = None) -> World:
    """This process's ``World`` from torchrun's variables (none set: a single process)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return World()
    try:
        size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (torchrun "
                          "sets them)") from None
    if not (size >= 1 and 0 <= rank < size and local >= 0):
        raise ConfigError(f"RANK {rank} and WORLD_SIZE {size} do not describe a process of a run")
    return World(rank, size, local)


def start(world: World) -> None:
    """Join the process group: gloo for CPU tensors and, where CUDA is present, NCCL for GPU ones."""
    torch = pytorch.load()
    dist = torch.distributed

    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    try:
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    except (ValueError, RuntimeError) as e:  # no rendezvous address, a timeout, a refused port
        raise ConfigError(f"{world} could not join the others ({str(e).splitlines()[0][:200]}); "
                          "start several processes with torchrun") from None


def stop() -> None:
    """Leave the process group, if this process joined one."""
    dist = pytorch.load().distributed

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_of(world: World, device: str) -> str:
    """The GPU of a process on a machine with several: ``cuda`` means ``cuda:LOCAL_RANK``.

    ``ConfigError`` for a device several processes cannot share: one GPU named for all of
    them (NCCL needs one each), more processes than GPUs, or mps (no collective runs there).
    """
    if not world.distributed or device == "cpu":
        return device
    if device == "mps":
        raise ConfigError("several processes cannot train on mps (no all-reduce runs there); "
                          "use --device cpu or one process")
    if device != "cuda":
        raise ConfigError(f"--device {device} under torchrun: each process takes its own GPU, "
                          "cuda:LOCAL_RANK; give --device cuda or auto")
    torch = pytorch.load()

    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ConfigError(f"{world} has local rank {world.local_rank}, and this machine has "
                          f"{count} CUDA GPU{'s' if count != 1 else ''}: start at most one "
                          "process per GPU (--nproc_per_node)")
    torch.cuda.set_device(world.local_rank)  # NCCL's communicator then lives on this GPU
    return f"cuda:{world.local_rank}"


def parts(n: int, world: World, micro: int) -> list[slice]:
    """The rows of a batch of ``n`` that this process computes, as ``micro`` slices.

    The batch is cut into ``world.size * micro`` near-equal consecutive
    parts; process r takes parts r*micro ... r*micro + micro - 1.
    """
    pieces = world.size * micro
    if n < pieces:
        raise ConfigError(f"a batch of {n} cannot be split into {pieces} parts ({world.size} "
                          f"process{'es' if world.size != 1 else ''} x --grad-accum {micro}); "
                          "give a larger --batch-size")
    bounds = [n * i // pieces for i in range(pieces + 1)]
    first = world.rank * micro
    return [slice(bounds[i], bounds[i + 1]) for i in range(first, first + micro)]


def _all_reduce(tensor: Any, op: str) -> None:
    """``dist.all_reduce`` in place; ``ProcessFailed`` when another process has gone (gloo
    raises a RuntimeError naming a reset connection, NCCL a DistError)."""
    dist = pytorch.load().distributed

    try:
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    except RuntimeError as e:
        raise ProcessFailed(f"another process of the run stopped ({str(e).splitlines()[0][:160]}); "
                            "the run directory keeps its last checkpoint: continue with "
                            "--resume") from None


def all_reduce_grads(params: Sequence[Any], extras: Sequence[float] = ()) -> list[float]:
    """Sum every parameter's gradient over the processes, through one flat buffer; the
    ``extras`` (a loss, a flag) ride at its end and come back summed too (in the gradients'
    precision, float32), which saves a collective's latency per step."""
    torch = pytorch.load()

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    tail = torch.tensor(list(extras), dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([g.reshape(-1) for g in grads] + [tail])
    _all_reduce(flat, "SUM")
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
    return [float(v) for v in flat[offset:].tolist()]


def all_sum(values: Sequence[float], device: str = "cpu") -> list[float]:
    """``values`` summed over the processes (float64)."""
    torch = pytorch.load()

    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    _all_reduce(t, "SUM")
    return [float(v) for v in t.tolist()]


def any_process(flag: bool, device: str = "cpu") -> bool:
    """Whether ``flag`` is true in any process (every process must ask)."""
    torch = pytorch.load()

    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    _all_reduce(t, "MAX")
    return bool(t.item())


@contextlib.contextmanager
def together(world: World) -> Iterator["Gate"]:
    """A stage every process gets through, or all stop: what one process does in it (process
    0 writing the run's first checkpoint) is done before the others go on. The stage ends
    at its ``Gate``, which the block may pass itself (``gate.passed()``) before its end."""
    gate = Gate(world)
    try:
        yield gate
    except BaseException:
        if not gate.failed():
            raise SystemExit(2) from None  # the first process that failed says why
        raise
    gate.passed()


class Gate:
    """The point where every process has set its run up: all go on, or all stop.

    Each process calls ``passed()`` when its setup is done or ``failed()``
    when it raised on the way; both are one collective, so a process whose
    setup fails does not leave the others waiting at their first update.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        self.done = False

    def _first_failure(self, failed: bool) -> int | None:
        torch = pytorch.load()

        self.done = True
        t = torch.tensor([self.world.rank if failed else self.world.size], dtype=torch.int64)
        _all_reduce(t, "MIN")
        first = int(t.item())
        return None if first == self.world.size else first

    def passed(self) -> None:
        """Go on if every process got here; else ``ProcessFailed`` in process 0, naming the
        first that did not, and a quiet exit in the others."""
        if not self.world.distributed or self.done:
            return
        first = self._first_failure(False)
        if first is not None and not self.world.main:
            raise SystemExit(2)  # the failed process and process 0 say it; no third voice
        if first is not None:
            raise ProcessFailed(f"process {first} of {self.world.size} stopped before training "
                                "began (its message is above); no process wrote anything")

    def failed(self) -> bool:
        """Report this process's failure; True if it is the first (the one whose message shows)."""
        if not self.world.distributed or self.done:
            return True
        return self._first_failure(True) == self.world.rank
