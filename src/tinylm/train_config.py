"""``TrainConfig``: how a neural model is trained, every setting declared once.

The training counterpart of ``tinylm.models.ModelConfig``: each field is a
setting (tinylm.settings) that carries its default, its check, its help
line and the models that read it, from which the ``tinylm train`` flags,
the run's ``config.json`` and the ``--resume`` agreement are derived. A
value is checked here, when a config is built (from flags, the Python API
or a saved run), so that the trainer (tinylm.train) reads only valid ones:
the learning rate by its setting's kind, its schedule against the steps by
``TrainConfig`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinylm import devices, settings
from tinylm.data import LOADERS
from tinylm.layers import BACKENDS
from tinylm.optim import OPTIMIZERS, SCHEDULES, lr_at
from tinylm.recipes import recipe_names
from tinylm.settings import (
    ALL_OR_POSITIVE, FRACTION, NONNEG_FLOAT, NONNEG_INT, POSITIVE_FLOAT, POSITIVE_INT, SEED, SWITCH,
    TEXT, choice,
    optional, setting,
)
from tinylm.text import FORMATS

# a lines run's train loss by default: all of the split up to this many targets, else its first
# batches that hold this many (the split is shuffled: a fixed sample)
TRAIN_EVAL_TARGETS = 262_144
# which weights a run keeps: after its last step, or at its lowest val loss
KEEP = ("last", "best")
DEVICE = settings.Kind(str, devices.is_device_name, devices.DEVICE_FORMS, metavar="DEVICE")


@dataclass(frozen=True)
class TrainConfig(settings.Settings):
    """How a neural model is trained: every setting that decides what a run computes.

    Each field is a setting (see tinylm.settings): its default, check, help
    line and the models that read it are declared here once; the
    ``tinylm train`` flags are made from them. ``resume=True`` marks what
    ``--resume`` may change.
    """

    backend: str = setting("numpy", "implementation of the model", choice(BACKENDS))
    format: str = setting("lines", "lines: the file is a list of items, one per line (stripped, "
                          "blank lines dropped); text: one continuous document kept character "
                          "for character (tabs, indentation, blank lines), split contiguously "
                          "into the first 90%%, the next 5%% and the last 5%% at line ends",
                          choice(FORMATS), models=None)
    loader: str = setting("words", "--format lines only: words: each line an independent item; "
                          "stream: the lines joined into one text, the protocol of the classic "
                          "reference figures", choice(LOADERS), models=None)
    seed: int = setting(42, "seed of the run's RNG (initialisation, batches, sampling)", SEED,
                        models=None)
    batch_size: int = setting(32, "examples per step, 0 = the whole train split", NONNEG_INT)
    steps: int = setting(5000, "optimizer steps (on --resume: the step to continue to)",
                         POSITIVE_INT, resume=True)
    optimizer: str = setting("adamw", "the optimizer", choice(OPTIMIZERS))
    lr: float = setting(1e-2, "(peak) learning rate", POSITIVE_FLOAT)
    beta2: float = setting(0.999, "AdamW's decay of its squared-gradient average (its "
                           "gradient average decays by 0.9)", FRACTION)
    lr_schedule: str = setting("cosine", "learning-rate schedule: constant; cosine to 0; step: "
                               "x0.1 after 75%% of the steps", choice(SCHEDULES))
    warmup: int = setting(0, "steps over which the learning rate climbs linearly to --lr before "
                          "the schedule begins (0: none)", NONNEG_INT)
    weight_decay: float = setting(0.0, "decoupled weight decay (AdamW) or L2 term (SGD)",
                                  NONNEG_FLOAT)
    ema: float = setting(0.0, "average the weights over the updates (an exponential moving "
                         "average with this decay: 0.999 weighs about the last 1,000 most); "
                         "evaluations, --keep and the run's saved weights use the average, "
                         "while the weights go on training (0: no average)", FRACTION)
    eval_every: int = setting(500, "evaluate every this many steps and at the last", POSITIVE_INT)
    keep: str = setting("last", "the weights the run keeps for its test loss, its samples and "
                        "'tinylm sample/eval': last (after the final step) or best (those an "
                        "evaluation with the lowest val loss measured, each evaluation coming "
                        "before its step's update: early stopping without stopping)",
                        choice(KEEP))
    eval_train_batches: int | None = setting(
        None, "--format lines: batches of the train split to estimate its loss on (default: "
        f"all of it up to {TRAIN_EVAL_TARGETS:,} targets, else its first batches that hold "
        "that many, a fixed sample since the lines are shuffled; 0: all)", ALL_OR_POSITIVE)
    eval_tokens: int = setting(32_768, "--format text: a split of at most this many tokens "
                               "(characters, or BPE tokens) is scored whole, each once; a "
                               "larger one (train, usually) is estimated from a fixed sample "
                               "of about this many, with its standard error", POSITIVE_INT,
                               resume=True)
    sample_prompt: str = setting("\n", "prompt of sample.txt", TEXT)
    sample_tokens: int = setting(0, "write sample.txt: this many tokens after the prompt "
                                 "(0: none)", NONNEG_INT)
    sample_seed: int = setting(42, "seed of the samples printed and saved after training", SEED)
    checkpoint_every: int = setting(0, "commit a checkpoint every N steps (0: at least once a "
                                    "minute); a kill loses no more than that", NONNEG_INT,
                                    resume=True)
    threads: int = setting(0, "threads for BLAS and PyTorch (0: one, unless OMP_NUM_THREADS or "
                           "the like is set; more threads thrash on a busy machine); the run "
                           "saves the count and a resume keeps it, since BLAS rounds "
                           "differently with another", NONNEG_INT, resume=True)
    device: str = setting("auto", "where a torch backend computes: auto (CUDA if present, else "
                          "the CPU), cpu, cuda, cuda:N or mps; checkpoints load on any device",
                          DEVICE, resume=True)
    dtype: str = setting("float32", "precision of the forward pass: float32 (every backend's "
                         "numbers equal), or bfloat16/float16 under torch.autocast (torch "
                         "backends; float16 with a loss scale)", choice(devices.DTYPES))
    compile: bool = setting(False, "torch backends: compile the network with torch.compile "
                            "(fused kernels; the first steps wait for the compiler, and the "
                            "numbers agree with uncompiled ones to rounding; needs a C++ "
                            "compiler on the CPU)", SWITCH, resume=True)
    grad_accum: int = setting(1, "split each batch into this many micro-batches whose "
                              "gradients add up before the update: the same step in less "
                              "memory (torch backends; may change on resume, to rounding)",
                              POSITIVE_INT, resume=True)
    diagnose_every: int = setting(0, "every N steps measure activation, gradient and update:data "
                                  "statistics into diagnostics.jsonl, for 'tinylm diagnose' "
                                  "(0: never); the run's numbers do not change", NONNEG_INT,
                                  resume=True)
    recipe: str | None = setting(None, "a published protocol; explicit flags override its "
                                 "settings (list them: tinylm recipes)",
                                 optional(choice(recipe_names), "a recipe name"))

    def __post_init__(self) -> None:
        super().__post_init__()
        # a warmup as long as the run leaves no step for the schedule: refused with the
        # settings, before a run directory is written
        lr_at(0, self.steps, self.lr, self.lr_schedule, warmup=self.warmup)
