"""The MLP at the speed of its matrix multiplies: each training step as a multiple of its floor.

    PYTHONPATH=src python benchmarks/bench_mlp.py [--steps-timed 200] [--rounds 20]
                                                  [--quick] [--load [N]]

A training step cannot be faster than the matrix multiplies it has to do:
for every Linear the forward product x @ W.T and the two of the backward
pass, dW = dY.T @ x and dX = dY @ W, with the batch and time axes folded
into one. Those products alone, at the step's shapes, in float32 and
numpy, are the step's *floor*. Everything is timed against it in the same
process, interleaved with it: round after round, each measurement one block
of steps, in a new order every round. A machine shared with other jobs
then slows floor and step alike, and their ratio means something where the
milliseconds alone would not.

Output: a header with the conditions (versions, BLAS libraries, threads,
load average), then per section one line per measurement:

    ms/step   the median over all the measurement's timed steps
    x floor   the median, over the rounds, of the ratio of the round's block
              to the floor's block of the same round (blocks timed seconds
              apart, so what the machine's other jobs did cancels; it can
              differ a little from ms/step over the floor's ms/step)
    q1..q3    the middle half of those round-by-round ratios: how far the
              machine moved them during the run
    fastest   the same median ratio of the blocks' fastest steps: on a busy
              machine a step is often preempted, and the longer the step
              the likelier, which inflates the median ratio; the fastest
              steps are the ones nothing interrupted, the closer figure to
              a quiet machine's (the median is what a run pays here and now)
    note      the target where the issue sets one

1. mlp-classic (batch 128, context 3, embedding 48, hidden 512, vocab 27:
   six matmuls, 67.2 MFLOP): the least a step can cost (the matmuls, the
   tanh and the optimizer alone: ``least_step``), the numpy, torch and
   torch-module steps (tinylm.train.Trainer._update), the numpy step by
   part, and the step as it is written the plain way
   (benchmarks/naive_steps.py);
2. bnmlp-classic and wavenet-classic, numpy and torch, each against the
   floor of its own Linears;
3. threads: the numpy and torch classic steps with tinylm's default
   (threads.limited(0)), one and two threads, and the machine's default
   (the BLAS pools as loaded, torch.set_num_threads(os.cpu_count())), which
   is what tinylm did before it limited its threads. With --load all of it
   again under a competing load: a process spinning on one core (--load N:
   N of them), started before the section and killed after it (on Ctrl-C
   and SIGTERM too), paused between the loaded blocks so that quiet and
   loaded blocks share their rounds. The section ends with the ratios the issue targets.

Targets, on a quiet machine: numpy step <= 1.3x its floor, torch step <=
1.5x; tinylm's default threads within 10% of the best thread count; under a
competing load, the default at least 3x faster than the machine's default.
Nothing is asserted: benchmarks print, tests assert.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np
import threadpoolctl
from threadpoolctl import threadpool_info, threadpool_limits

from tinylm import data, threads
from tinylm.batches import Batches, make_split
from tinylm.layers import numpy_layers
from tinylm.models import ModelConfig, build_model
from tinylm.optim import make_optimizer
from tinylm.rng import RNG
from tinylm.runs import resolve_configs
from tinylm.train import TrainConfig, Trainer

from naive_steps import NaiveNumpyStep, NaiveTorchStep

try:
    import torch
except ImportError:
    torch = None

WARMUP = 10     # untimed steps after building a measurement: caches, allocator, autograd code
BLOCK_WARMUP = 2  # untimed steps at the start of every block: thread pools settle after a change

MACHINE = "machine"
Threads = Union[int, str]  # 0: tinylm's default, n: n threads, MACHINE: as the machine comes


# --- conditions ------------------------------------------------------------------------------

def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def thread_label(setting: Threads) -> str:
    if setting == MACHINE:
        return f"machine default ({blas_threads_loaded()} BLAS, torch {os.cpu_count()})"
    if setting == 0:
        n = threads.chosen(0)
        return f"tinylm default ({n if n is not None else 'environment'})"
    return f"{setting} thread" + ("s" if setting != 1 else "")


_POOLS_AT_START = threadpool_info()  # before any limit: the pools as this machine gives them


def blas_threads_loaded() -> str:
    counts = sorted({p["num_threads"] for p in _POOLS_AT_START if p["user_api"] == "blas"})
    return "/".join(map(str, counts)) or "?"


def conditions(args) -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    pools = "; ".join(
        f"{p['internal_api']} {p['prefix']} {p.get('version') or ''} "
        f"({', '.join(str(p[k]) for k in ('architecture', 'threading_layer') if p.get(k))}) "
        f"{p['num_threads']} threads [{'/'.join(Path(p['filepath']).parts[-3:-1])}]"
        .replace(" ()", "").replace("  ", " ")
        for p in threadpool_info())
    if torch is not None:
        config = torch.__config__.show()
        blas = next((part.split("=", 1)[1] for part in config.replace(",", " ").split()
                     if part.startswith("BLAS_INFO=")), "?")
        backend = next((line.split(":", 1)[1].strip()
                        for line in torch.__config__.parallel_info().splitlines()
                        if line.startswith("ATen parallel backend")), "?")
        torch_line = (f"torch {torch.__version__}: BLAS {blas}, parallel {backend}, "
                      f"{torch.get_num_threads()} threads as loaded")
    else:
        torch_line = "torch not installed: its measurements are left out"
    env = ", ".join(f"{name}={os.environ.get(name, 'unset')}"
                    for name in (*threads.ENVIRONMENT, "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"))
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    per_block = args.steps_timed // args.rounds
    return [
        f"python {platform.python_version()} | numpy {np.__version__} | "
        f"threadpoolctl {threadpoolctl.__version__} | {platform.machine()} {cpu}",
        f"cpus: os.cpu_count() {os.cpu_count()}, usable {affinity}",
        f"BLAS pools (threadpoolctl): {pools}",
        torch_line,
        f"environment: {env}",
        f"threads unless a line says otherwise: {thread_label(0)}, i.e. threads.limited(0)",
        f"timing: {args.rounds} rounds x {per_block} steps per measurement "
        f"(+{BLOCK_WARMUP} untimed per block), interleaved, shuffled each round; medians",
        f"load average (1, 5, 15 min) at start: {loadavg()}",
    ]


# --- interleaved timing ----------------------------------------------------------------------

@dataclass
class Measurement:
    """One line of output: a step to call, its floor, its thread setting, its samples.

    ``step()`` may return {part: seconds}: each part is then a measurement of
    its own (in ``parts``), filled by its parent and never called itself.
    ``loaded``: timed while the competing load runs (see ``CompetingLoad``).
    """

    label: str
    step: Callable[[], Any] | None
    floor: "Measurement | None" = None  # None: this is a floor
    threads: Threads = 0
    note: str = ""
    loaded: bool = False
    samples: list[float] = field(default_factory=list)
    blocks: list[float] = field(default_factory=list)  # median of each round's block
    lows: list[float] = field(default_factory=list)    # fastest step of each round's block
    parts: dict[str, "Measurement"] = field(default_factory=dict)

    def median(self) -> float:
        return statistics.median(self.samples)


def thread_setting(setting: Threads):
    """The context to time a block in: tinylm's limit, or the machine's pools as they come."""
    if setting != MACHINE:
        return threads.limited(setting)
    return _machine_threads()


@contextlib.contextmanager
def _machine_threads() -> Iterator[None]:
    # what tinylm did before limiting: BLAS left as loaded, torch set to every core
    before = torch.get_num_threads() if torch is not None else None
    with threadpool_limits(limits=None):
        if torch is not None:
            torch.set_num_threads(os.cpu_count())
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(before)


def interleave(measurements: list[Measurement], rounds: int, per_block: int,
               load: "CompetingLoad | None" = None) -> None:
    """Time every measurement in each of ``rounds`` rounds, a block of ``per_block`` steps each."""
    def conditions(m: Measurement):
        if load is not None:
            load.running(m.loaded)
        return thread_setting(m.threads)

    for m in measurements:
        with conditions(m):
            for _ in range(WARMUP):
                m.step()
    order = list(measurements)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        # a new order every round: no measurement always follows the same other (a rotation
        # would keep every neighbour), so what one leaves behind in caches, thread pools or
        # the allocator falls on all alike
        shuffle(order)
        for m in order:
            with conditions(m):
                for _ in range(BLOCK_WARMUP):
                    m.step()
                block, parts = [], {}
                for _ in range(per_block):
                    t = time.perf_counter()
                    split = m.step()
                    block.append(time.perf_counter() - t)
                    for name, seconds in (split if isinstance(split, dict) else {}).items():
                        parts.setdefault(name, []).append(seconds)
            m.samples += block
            m.blocks.append(statistics.median(block))
            m.lows.append(min(block))
            for name, seconds in parts.items():
                part = m.parts.setdefault(name, Measurement(f"  {name}", None, m.floor, m.threads))
                part.samples += seconds
                part.blocks.append(statistics.median(seconds))
                part.lows.append(min(seconds))
    if load is not None:
        load.running(False)


def ratio(a: Measurement, b: Measurement, fastest: bool = False) -> tuple[float, float, float]:
    """The median and quartiles of a / b taken round by round (of the blocks' fastest steps).

    Each round's pair was timed within seconds of each other, so the ratio
    cancels what the machine's other jobs did meanwhile, which the ratio of
    two overall medians would not.
    """
    ratios = [x / y for x, y in (zip(a.lows, b.lows) if fastest else zip(a.blocks, b.blocks))]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q2, q1, q3


HEAD = (f"  {'measurement':<52} {'ms/step':>8} {'x floor':>8}  {'q1..q3':<12} {'fastest':>7}"
        "  note")


def line(m: Measurement) -> str:
    ms = 1000 * m.median()
    if m.floor is None:
        return f"  {m.label:<52} {ms:8.3f} {1:8.2f}  {'':<12} {1:7.2f}  {m.note}".rstrip()
    r, q1, q3 = ratio(m, m.floor)
    fast = ratio(m, m.floor, fastest=True)[0]
    return (f"  {m.label:<52} {ms:8.3f} {r:8.2f}  {q1:5.2f}..{q3:<5.2f} {fast:7.2f}  "
            f"{m.note}").rstrip()


def report(measurements: list[Measurement]) -> None:
    print(HEAD)
    for m in measurements:
        print(line(m))
        for part in m.parts.values():
            print(line(part))


# --- floors ----------------------------------------------------------------------------------

Shape = tuple[int, int, int]  # a Linear's (N examples, in, out): batch and time folded into N


def linear_shapes(model) -> list[Shape]:
    """Each Linear's (N, in, out) in a numpy model that has just run a forward pass."""
    shapes = []
    for layer in model.layers:
        if isinstance(layer, numpy_layers.Linear):
            out_features, in_features = layer.weight.data.shape
            shapes.append((layer.x.size // in_features, in_features, out_features))
    return shapes


def matmul_flops(shapes: list[Shape]) -> int:
    """2 N in out for each of the three products of every Linear."""
    return sum(3 * 2 * n * i * o for n, i, o in shapes)


def numpy_floor(shapes: list[Shape]) -> Callable[[], None]:
    """The three products of every Linear as the numpy layer writes them, 2-D, float32."""
    rng = np.random.default_rng(0)
    arrays = [(rng.random((n, i), dtype=np.float32), rng.random((o, i), dtype=np.float32),
               rng.random((n, o), dtype=np.float32)) for n, i, o in shapes]

    def floor() -> None:
        for x, W, dy in arrays:
            x @ W.T     # forward
            dy.T @ x    # dW
            dy @ W      # dX

    return floor


def torch_floor(shapes: list[Shape]) -> Callable[[], None]:
    """The same products in torch: its own BLAS, for comparison with the numpy floor."""
    g = torch.Generator().manual_seed(0)
    arrays = [(torch.rand((n, i), generator=g), torch.rand((o, i), generator=g),
               torch.rand((n, o), generator=g)) for n, i, o in shapes]

    def floor() -> None:
        with torch.no_grad():
            for x, W, dy in arrays:
                x @ W.T
                dy.T @ x
                dy @ W

    return floor


def least_step(s: "Setting", shapes: list[Shape], backend: str = "numpy") -> Callable[[], None]:
    """The floor's matmuls, then the elementwise work no rewrite of the layers removes.

    Each Tanh's forward and derivative at its shape (float32 tanh is the
    costliest elementwise operation of the step), and the optimizer's update
    of every parameter: tinylm's own, as a run makes it. The rest of a step
    (embedding, bias, softmax, bookkeeping, and for torch the autograd
    engine) is on top of this, so a step cannot come closer to the floor than
    this measurement does. ``backend`` "torch": the same in torch, its own
    matmuls included.
    """
    c = s.train
    X, Y = Batches(s.splits["train"], c.batch_size, RNG(1)).next()
    models = {}
    for name in {"numpy", backend}:  # numpy's shows the tanh shapes
        models[name] = build_model(s.net, name, RNG(c.seed))
        models[name].forward(X, Y)
        models[name].backward()
    model = models[backend]
    optimizer = make_optimizer(model, c.optimizer, lr=c.lr, weight_decay=c.weight_decay)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(layer.out.shape, dtype=np.float32)
              for layer in models["numpy"].layers if isinstance(layer, numpy_layers.Tanh)]
    if backend == "numpy":
        floor, tanh = numpy_floor(shapes), numpy_layers.Tanh()

        def elementwise() -> None:
            for x in inputs:
                tanh.forward(x)
                tanh.backward(x)
    else:
        floor = torch_floor(shapes)
        tensors = [torch.from_numpy(x) for x in inputs]

        def elementwise() -> None:
            with torch.no_grad():
                for x in tensors:
                    torch.ops.aten.tanh_backward(x, torch.tanh(x))

    def step() -> None:
        floor()
        elementwise()
        optimizer.step()

    return step


# --- steps -----------------------------------------------------------------------------------

@dataclass
class Setting:
    """A recipe's configs and its splits: what every step of a section is built from."""

    name: str
    net: ModelConfig
    train: TrainConfig
    splits: dict


def setting(recipe: str, lines3, tokenizer) -> Setting:
    net, config = resolve_configs(None, recipe, {}, vocab_size=tokenizer.vocab_size)
    splits = {name: make_split(name, ls, tokenizer, net.context, config.loader)
              for name, ls in zip(data.SPLIT_NAMES, lines3)}
    return Setting(recipe, net, config, splits)


def trainer_step(s: Setting, backend: str) -> Callable[[], None]:
    """One call: Trainer._update, the step a tinylm run takes (batch, forward, backward, update)."""
    config = TrainConfig.from_dict({**s.train.to_dict(), "backend": backend})
    rng = RNG(config.seed)
    trainer = Trainer(config, build_model(s.net, backend, rng), s.splits, rng)
    batches = Batches(s.splits["train"], config.batch_size, rng)
    count = itertools.count()
    return lambda: trainer._update(batches, next(count))


def numpy_parts_step(s: Setting) -> Callable[[], dict[str, float]]:
    """The numpy step again, each part timed: what _update does, in its order."""
    c = s.train
    rng = RNG(c.seed)
    model = build_model(s.net, "numpy", rng)
    optimizer = make_optimizer(model, c.optimizer, lr=c.lr, weight_decay=c.weight_decay)
    batches = Batches(s.splits["train"], c.batch_size, rng)
    clock = time.perf_counter

    def step() -> dict[str, float]:
        t0 = clock()
        X, Y = batches.next()
        t1 = clock()
        model.train()
        model.forward(X, Y)
        t2 = clock()
        model.backward()
        t3 = clock()
        optimizer.step()
        t4 = clock()
        return {"batch": t1 - t0, "forward (1/3 of the matmul FLOPs)": t2 - t1,
                "backward (2/3 of the matmul FLOPs)": t3 - t2, "optimizer": t4 - t3}

    return step


def shapes_of(s: Setting) -> list[Shape]:
    model = build_model(s.net, "numpy", RNG(s.train.seed))
    X, Y = Batches(s.splits["train"], s.train.batch_size, RNG(1)).next()
    model.forward(X, Y)
    return linear_shapes(model)


def naive_step(kind: type, s: Setting, lines3, tokenizer) -> Callable[[], None]:
    c, net = s.train, s.net
    tokens = tokenizer.encode("".join(line + "\n" for line in lines3[0]))
    weights = build_model(net, "numpy", RNG(c.seed)).state_dict()  # tinylm's initial weights
    return kind(tokens, weights, net.context, c.batch_size, c.lr, c.weight_decay, c.steps)


# --- a competing load ------------------------------------------------------------------------

# Spins on one core. It dies with the benchmark even when no finally can run
# (SIGKILL), and even while stopped: the kernel sends it SIGKILL when its
# parent goes (PR_SET_PDEATHSIG, Linux); elsewhere it notices the new parent.
SPIN = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


def _terminate(signum, frame):
    # SIGTERM's default would end the process on the spot; an exception unwinds through the
    # finally that kills the spinner, and exits with the status the signal would have given
    raise SystemExit(128 + signum)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux), to show that the load really ran."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class CompetingLoad:
    """Processes spinning on one core each, running only during the blocks timed under load.

    They are started once and paused (SIGSTOP) between those blocks, so that
    the quiet and the loaded blocks share their rounds and every ratio
    between them is taken a few seconds apart.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.procs: list[subprocess.Popen] = []
        self.on, self.since, self.seconds = False, 0.0, 0.0

    def start(self) -> None:
        for _ in range(self.processes):
            proc = subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())])
            self.procs.append(proc)
            proc.send_signal(signal.SIGSTOP)

    def running(self, on: bool) -> None:
        if on == self.on:
            return
        now = time.perf_counter()
        if self.on:
            self.seconds += now - self.since
        self.since = now
        for proc in self.procs:
            proc.send_signal(signal.SIGCONT if on else signal.SIGSTOP)
        self.on = on

    def describe(self) -> str:
        cpus = [cpu_seconds(proc.pid) for proc in self.procs]
        share = (f"{sum(cpus) / self.seconds:.2f} cores" if None not in cpus and self.seconds
                 else "an unknown share of the cores")
        pids = ", ".join(str(proc.pid) for proc in self.procs)
        return (f"competing load: spinning pid {pids}, {self.seconds:.0f} s in the loaded "
                f"blocks, using {share} in all")

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()  # SIGKILL ends a stopped process too
            proc.wait()


@contextlib.contextmanager
def competing_load(processes: int) -> Iterator[CompetingLoad]:
    """A ``CompetingLoad`` for the block, killed however the block ends (Ctrl-C, SIGTERM too)."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    load = CompetingLoad(processes)
    try:
        load.start()
        yield load
    finally:
        load.close()
        signal.signal(signal.SIGTERM, previous)


# --- the sections ----------------------------------------------------------------------------

def section(title: str) -> None:
    print(f"\n== {title}")
    print(f"  load average at start: {loadavg()}")


def classic(args, s: Setting, lines3, tokenizer) -> None:
    shapes = shapes_of(s)
    n = s.net
    section(f"1. mlp-classic step (batch {s.train.batch_size}, context {n.context}, embedding "
            f"{n.n_embd}, hidden {n.n_hidden}, vocab {n.vocab_size}, {s.train.optimizer}): floor = "
            f"{3 * len(shapes)} matmuls, {matmul_flops(shapes) / 1e6:.1f} MFLOP")
    floor = Measurement("floor: the matmuls alone, numpy", numpy_floor(shapes))
    ms = [floor]
    if torch is not None:
        ms.append(Measurement("the same matmuls in torch", torch_floor(shapes), floor))
    ms.append(Measurement("the matmuls + tanh + optimizer: the least a step costs",
                          least_step(s, shapes), floor))
    if torch is not None:
        ms.append(Measurement("the same in torch: the least a torch step costs",
                              least_step(s, shapes, "torch"), floor))
    ms.append(Measurement("numpy step (Trainer._update)", trainer_step(s, "numpy"), floor,
                          note="target <= 1.3"))
    ms.append(Measurement("numpy step, by part:", numpy_parts_step(s), floor))
    if torch is not None:
        ms.append(Measurement("torch step", trainer_step(s, "torch"), floor, note="target <= 1.5"))
        ms.append(Measurement("torch-module step", trainer_step(s, "torch-module"), floor))
    ms.append(Measurement("naive step, numpy (list batches, per-example dC)",
                          naive_step(NaiveNumpyStep, s, lines3, tokenizer), floor))
    if torch is not None:
        ms.append(Measurement("naive step, torch (list batches, per-example dC)",
                              naive_step(NaiveTorchStep, s, lines3, tokenizer), floor))
    interleave(ms, args.rounds, args.steps_timed // args.rounds)
    report(ms)
    print(f"  load average at end: {loadavg()}")


def deep(args, settings: list[Setting]) -> None:
    section("2. deep models, one step each against the floor of its own Linears")
    groups = []
    for s in settings:
        shapes = shapes_of(s)
        desc = ", ".join(f"{n}x{i}x{o}" for n, i, o in shapes)
        floor = Measurement(f"{s.name} floor: {3 * len(shapes)} matmuls, "
                            f"{matmul_flops(shapes) / 1e6:.1f} MFLOP", numpy_floor(shapes),
                            note=f"N x in x out: {desc}")
        group = [floor]
        if torch is not None:
            group.append(Measurement("  the same matmuls in torch", torch_floor(shapes), floor))
        group.append(Measurement(f"  numpy step ({s.train.optimizer})", trainer_step(s, "numpy"),
                                 floor))
        if torch is not None:
            group.append(Measurement("  torch step", trainer_step(s, "torch"), floor))
        groups.append(group)
    interleave([m for g in groups for m in g], args.rounds, args.steps_timed // args.rounds)
    for group in groups:
        report(group)
    print(f"  load average at end: {loadavg()}")


THREAD_SETTINGS: tuple[Threads, ...] = (0, 1, 2, MACHINE)
SHORT = {0: "default", 1: "1 thread", 2: "2 threads", MACHINE: "machine default"}


def thread_section(args, s: Setting) -> None:
    title = "3. threads, mlp-classic step"
    if args.load:
        spinning = ("a process spinning on one core" if args.load == 1
                    else f"{args.load} processes spinning on one core each")
        title += f": quiet, and loaded ({spinning}, paused between the loaded blocks)"
    section(title)
    shapes = shapes_of(s)
    backends = ("numpy", "torch") if torch is not None else ("numpy",)
    ms: list[Measurement] = []
    steps: dict[tuple[str, bool], dict[Threads, Measurement]] = {}
    for loaded in (False, True) if args.load else (False,):
        where = ", loaded" if loaded else ""
        floor = Measurement(f"floor, {thread_label(0)}{where}", numpy_floor(shapes),
                            ms[0] if loaded else None, loaded=loaded,
                            note="x the quiet floor" if loaded else "")
        ms.append(floor)
        for t in (2, MACHINE):
            ms.append(Measurement(f"floor, {thread_label(t)}{where}", numpy_floor(shapes), floor,
                                  t, loaded=loaded))
        for backend in backends:
            by = steps[backend, loaded] = {}
            for t in THREAD_SETTINGS:
                by[t] = Measurement(f"{backend} step, {thread_label(t)}{where}",
                                    trainer_step(s, backend), floor, t, loaded=loaded)
                ms.append(by[t])
    with competing_load(args.load) if args.load else contextlib.nullcontext() as load:
        interleave(ms, args.rounds, args.steps_timed // args.rounds, load)
        described = load.describe() if load is not None else ""
    report(ms)
    if described:
        print(f"  {described}")
    print(f"  {'ratios, round by round':<52} {'':>8} {'median':>8}  {'q1..q3':<12} "
          f"{'fastest':>7}")
    for backend in backends:
        by = steps[backend, False]
        best = fastest(by.values())
        summary(f"{backend}: default / the best ({SHORT[best.threads]}), quiet", by[0], best,
                "target <= 1.10")
    if args.load:
        for backend in backends:
            by, quiet = steps[backend, True], steps[backend, False]
            summary(f"{backend}: machine default / tinylm default, loaded", by[MACHINE], by[0],
                    "target >= 3")
            best = fastest(by.values())
            summary(f"{backend}: default / the best ({SHORT[best.threads]}), loaded", by[0],
                    best, "")
            summary(f"{backend}: tinylm default, loaded / quiet", by[0], quiet[0], "")
            summary(f"{backend}: machine default, loaded / quiet", by[MACHINE], quiet[MACHINE], "")
    print(f"  load average at end: {loadavg()}")


def fastest(measurements) -> Measurement:
    """The measurement with the lowest multiple of its floor, the figure every line leads with."""
    return min(measurements, key=lambda m: ratio(m, m.floor)[0])


def summary(text: str, a: Measurement, b: Measurement, target: str) -> None:
    r, q1, q3 = ratio(a, b)
    fast = ratio(a, b, fastest=True)[0]
    print(f"  {text:<61} {r:8.2f}  {q1:5.2f}..{q3:<5.2f} {fast:7.2f}  {target}".rstrip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-timed", type=int, default=200,
                        help="timed steps per measurement, spread over the rounds (default 200)")
    parser.add_argument("--rounds", type=int, default=20,
                        help="interleaved rounds; each measurement is timed once per round")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 8 rounds of 4 steps")
    parser.add_argument("--load", type=int, nargs="?", const=1, default=0, metavar="N",
                        help="also time the thread settings under a competing load: N processes "
                             "(default 1) spinning on one core each")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps_timed = 8, 32
    if args.rounds < 1 or args.steps_timed < args.rounds:
        parser.error("--steps-timed must be at least --rounds (>= 1)")
    if args.load < 0:
        parser.error("--load takes a number of processes, 1 or more")

    print(__doc__.splitlines()[0])
    for text in conditions(args):
        print(text)
    lines = data.read_lines(data.default_dataset())
    tokenizer = data.Tokenizer.from_lines(lines)
    lines3 = data.split_lines(lines, seed=42)
    mlp = setting("mlp-classic", lines3, tokenizer)
    try:
        classic(args, mlp, lines3, tokenizer)
        deep(args, [setting(name, lines3, tokenizer)
                     for name in ("bnmlp-classic", "wavenet-classic")])
        thread_section(args, mlp)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
