"""Which layers make each model, and how their weights start.

A model is named by a ``ModelConfig`` and built by ``build_model(config,
backend, rng)``. Each entry of ``MODELS`` is a builder that is written once
for every backend: it receives the backend's layer vocabulary (a module
with ``Embedding``, ``Flatten``, ``Linear``, ``Tanh``...) and returns a
``Blueprint``: the layer list, and the initial weights drawn from the
tinylm RNG in one canonical order as float32 arrays. Because the weights
are drawn once, as arrays, and then copied into whichever backend was
asked for, the numpy, PyTorch and scalar-engine versions of a model start
from identical numbers.

Backends:
  numpy         hand-written forward and backward passes (float32)
  torch         raw tensors with requires_grad, no nn.Module (float32)
  torch-module  idiomatic nn.Embedding / nn.Linear / nn.Sequential (float32)
  micrograd     tinylm's scalar autograd engine (Python floats): tiny models only

To add a model, write a builder and decorate it with ``@register("name",
**its_defaults)``; a new architecture setting is one ``ModelConfig`` field
(with a default, so old config files still load).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np

from tinylm import pytorch, settings
from tinylm.errors import ConfigError
from tinylm.layers import BACKENDS, TORCH_BACKENDS
from tinylm.rng import RNG
from tinylm.settings import (
    FRACTION, NONNEG_FLOAT, NONNEG_INT, POSITIVE_INT, REQUIRED, choice, setting,
)


_BACKEND_MODULES = {
    "numpy": "tinylm.layers.numpy_layers",
    "torch": "tinylm.layers.torch_layers",
    "torch-module": "tinylm.layers.torch_modules",
    "micrograd": "tinylm.layers.micrograd_layers",
}


DEEP_INITS = ("default", "kaiming", "noscale", "naive")
DEFAULT_MODEL = "mlp"  # a neural run with neither --model nor --recipe
FIXED_WINDOW = ("mlp", "bnmlp", "wavenet")  # the models that read a context window of any size
# the models that predict at every position of a block of tokens (tinylm.layers: Transformer,
# RecurrentLM), trained on data.word_sequences / stream_sequences
SEQUENCE = ("rnn", "gru", "transformer")


@dataclass(frozen=True)
class ModelConfig(settings.Settings):
    """Everything needed to rebuild a model's architecture (saved as JSON in a run).

    Each field is a setting (see tinylm.settings): its default, its check,
    its help line and the models that read it are declared here once, and
    the ``tinylm train`` flags are made from them. A model's own defaults
    (the bigram's context of 1...) are given where the model is registered.
    """

    # not a flag of its own: ``--model`` chooses between the count and the neural models
    model: str = setting(REQUIRED, "which neural model", choice(lambda: tuple(MODELS)), flag=False)
    vocab_size: int = setting(REQUIRED, "tokens in the vocabulary (from the data)", POSITIVE_INT,
                              flag=False)
    context: int = setting(3, "tokens the model reads to predict the next", POSITIVE_INT,
                           models=FIXED_WINDOW)
    n_embd: int = setting(10, "embedding size per token", POSITIVE_INT,
                          models=FIXED_WINDOW + SEQUENCE)
    n_hidden: int = setting(200, "hidden units per layer", POSITIVE_INT, models=FIXED_WINDOW)
    n_layers: int = setting(1, "hidden layers of the deep MLP, blocks of the transformer",
                            POSITIVE_INT, models=("bnmlp", "transformer"))
    n_heads: int = setting(4, "attention heads per block (n_embd must be a multiple)",
                           POSITIVE_INT, models=("transformer",))
    n_embd2: int = setting(64, "hidden state size of the recurrent nets", POSITIVE_INT,
                           models=("rnn", "gru"))
    block_size: int = setting(0, "positions a sequence model reads at once (0: the longest "
                              "item + 1, from the data)", NONNEG_INT, models=SEQUENCE)
    dropout: float = setting(0.0, "probability of zeroing an activation in training (the "
                             "transformer: embeddings, attention weights, both residual "
                             "branches; rnn, gru: embeddings and read-out)", FRACTION,
                             models=SEQUENCE)
    init: str = setting("default", "initialisation of the deep models: default = kaiming (Kaiming "
                        "gains, 0.1x output layer); noscale: without the 0.1; naive: N(0, 1) weights",
                        choice(DEEP_INITS), models=("bnmlp", "wavenet"))
    reg: float = setting(0.01, "weight penalty reg * mean(W**2), the neural counterpart of "
                         "additive smoothing", NONNEG_FLOAT, models=("bigram",))

    @property
    def per_position(self) -> bool:
        """Whether the model predicts at every position of a block (see ``SEQUENCE``)."""
        return self.model in SEQUENCE


@dataclass
class Blueprint:
    """A builder's answer: the layers, their initial weights, what the net reads.

    ``init`` maps state-dict names to float32 arrays, in the order they were
    drawn; names it leaves out keep the value the layer starts with (e.g.
    BatchNorm's gain of 1). ``reads`` is how many of the last context tokens
    the network sees; ``penalties`` adds c * mean(weight**2) to the loss.
    """

    layers: list
    init: dict[str, np.ndarray]
    reads: int
    penalties: dict[str, float] = field(default_factory=dict)
    # a sequence model: one network (its children named as in PyTorch) instead of ``layers``
    net: Any = None


Builder = Callable[[ModelConfig, ModuleType, RNG], Blueprint]
MODELS: dict[str, Builder] = {}
# model name -> the settings (of any config class) that a plain ``--model NAME`` means
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {}


def register(name: str, **defaults: Any) -> Callable[[Builder], Builder]:
    """Decorator: make a builder available as ``ModelConfig(model=name)``.

    ``defaults`` are the model's own defaults for any setting, model or
    training (see tinylm.settings); explicit flags and recipes override them.
    """
    def add(builder: Builder) -> Builder:
        MODELS[name] = builder
        MODEL_DEFAULTS[name] = defaults
        return builder
    return add


def layer_module(backend: str) -> ModuleType:
    """The layer vocabulary of a backend (imports PyTorch only when it is asked for)."""
    if backend not in _BACKEND_MODULES:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend in TORCH_BACKENDS:
        pytorch.load(f"the {backend!r} backend")
    return importlib.import_module(_BACKEND_MODULES[backend])


def build_model(config: ModelConfig, backend: str, rng: RNG):
    """Build ``config``'s model on ``backend``, its weights drawn from ``rng``.

    Returns the backend's model (see tinylm.layers.base.LanguageModel):
    forward(idx, targets=None) -> (logits, loss) (a sequence model also
    forward(idx, cache=Cache()) for generating), backward(), parameters(),
    train()/eval(), state_dict()/load_state_dict(), layers, context, config.
    """
    L = layer_module(backend)
    blueprint = MODELS[config.model](config, L, rng)
    if blueprint.net is not None:
        model = L.SequenceLM(config, blueprint.net, blueprint.reads)
    else:
        model = L.LM(config, L.Sequential(blueprint.layers), blueprint.reads, blueprint.penalties)
    model.load_state_dict(blueprint.init, strict=False)
    model.draw_dropout_from(rng)  # the trainer gives it the run's RNG again (after a resume too)
    return model


def _check_init(config: ModelConfig, *choices: str) -> None:
    if config.init not in choices:
        raise ConfigError(f"model {config.model!r} has no init {config.init!r}; "
                          f"choose one of {', '.join(choices)}")


# The neural bigram is the count bigram learned by gradient descent: the whole
# train split in every step (batch_size 0) and the large learning rate plain
# SGD needs on a one-layer softmax.
@register("bigram", context=1, batch_size=0, steps=200, optimizer="sgd", lr=50.0,
          lr_schedule="constant", eval_every=50)
def bigram(config: ModelConfig, L: ModuleType, rng: RNG) -> Blueprint:
    """The neural bigram: a V x V table of logits, one row per previous token.

    Looking up row ``idx`` equals ``onehot(idx) @ W``, the textbook view of
    a one-layer network on one-hot inputs, without the multiplication. The
    loss adds ``reg * mean(W**2)``, which pulls every row towards uniform
    like adding counts does to a count table. Only the last context token is
    read, whatever ``context`` is.
    """
    _check_init(config, "default")
    V = config.vocab_size
    layers = [L.Embedding(V, V), L.Flatten()]                             # (B, 1) -> (B, 1, V) -> (B, V)
    init = {"layers.0.weight": rng.randn_array(V * V).reshape(V, V)}
    return Blueprint(layers, init, reads=1, penalties={"layers.0.weight": float(config.reg)})


def default_linear(rng: RNG, init: dict[str, np.ndarray], name: str, fan_out: int, fan_in: int,
                   bias: bool = True) -> None:
    """``name``.weight, then ``name``.bias, uniform in +-1/sqrt(fan_in): PyTorch's own
    default for nn.Linear, drawn from ``rng`` into ``init``."""
    s = 1.0 / math.sqrt(fan_in)
    init[f"{name}.weight"] = rng.rand_array(fan_out * fan_in, -s, s).reshape(fan_out, fan_in)
    if bias:
        init[f"{name}.bias"] = rng.rand_array(fan_out, -s, s)


@register("mlp")
def mlp(config: ModelConfig, L: ModuleType, rng: RNG) -> Blueprint:
    """The MLP language model of Bengio, Ducharme, Vincent and Jauvin, "A Neural
    Probabilistic Language Model", JMLR 3 (2003):
    ``Embedding -> Flatten -> Linear -> Tanh -> Linear`` over the last
    ``context`` tokens (without the paper's optional direct connections).

    Initialisation, in this order: embedding table N(0, 1); each Linear's
    weight then bias uniform in +-1/sqrt(fan_in), PyTorch's own default.
    """
    _check_init(config, "default")
    V, T, E, H = config.vocab_size, config.context, config.n_embd, config.n_hidden
    layers = [
        L.Embedding(V, E),        # (B, T) -> (B, T, E)
        L.Flatten(),              # (B, T*E)
        L.Linear(T * E, H),       # (B, H)
        L.Tanh(),                 # (B, H)
        L.Linear(H, V),           # (B, V)
    ]
    init = {"layers.0.weight": rng.randn_array(V * E, 0.0, 1.0).reshape(V, E)}
    default_linear(rng, init, "layers.2", H, T * E)
    default_linear(rng, init, "layers.4", V, H)
    return Blueprint(layers, init, reads=T)


# --- deeper networks: Kaiming initialisation, BatchNorm, WaveNet ---------------------------

GAINS = {"linear": 1.0, "tanh": 5.0 / 3.0, "relu": math.sqrt(2.0)}
OUTPUT_SCALE = 0.1


def gain(nonlinearity: str) -> float:
    """Kaiming gain for the nonlinearity that follows a layer (He et al., 2015).

    A tanh squashes its input, so the weights before it are scaled up by 5/3
    to keep the activations' spread from shrinking layer after layer; a
    ReLU zeroes half its input, hence sqrt(2); a linear layer needs 1.
    """
    try:
        return GAINS[nonlinearity]
    except KeyError:
        raise ConfigError(f"no Kaiming gain for {nonlinearity!r}; choose one of "
                          f"{', '.join(GAINS)}") from None


def kaiming_normal(rng: RNG, fan_out: int, fan_in: int, gain: float = 1.0) -> np.ndarray:
    """A (fan_out, fan_in) weight drawn N(0, 1) * gain / sqrt(fan_in), row-major.

    He, Zhang, Ren and Sun, "Delving Deep into Rectifiers: Surpassing
    Human-Level Performance on ImageNet Classification", ICCV 2015: with
    std 1/sqrt(fan_in) each output of ``x @ W.T`` has about the variance of
    one input, so activations neither blow up nor fade with depth.
    """
    return rng.randn_array(fan_out * fan_in, 0.0, gain / math.sqrt(fan_in)).reshape(fan_out, fan_in)


def expected_initial_loss(config: ModelConfig | int) -> float:
    """ln(vocab_size): the loss of a model that starts out predicting uniformly over the
    vocabulary of ``config`` (a model config, or the vocabulary's size)."""
    return math.log(config if isinstance(config, int) else config.vocab_size)


def _deep_weights(config: ModelConfig, rng: RNG, hidden: list[tuple[str, int, int]],
                  output: str) -> dict[str, np.ndarray]:
    """Initial weights of a deep tanh network, in the canonical order.

    Order: the embedding table N(0, 1); each hidden Linear weight in layer
    order, (out, in) row-major; then the output weight. The output bias
    starts at 0 and BatchNorm at weight 1, bias 0 (nothing drawn). With
    ``init``:
      default/kaiming: hidden N(0,1) * 5/3 / sqrt(fan_in); output
                       N(0,1) / sqrt(fan_in) * 0.1, so the first logits are
                       nearly equal and the first loss is close to ln(V);
      noscale:         the same without the 0.1 (confidently wrong at start);
      naive:           every weight N(0, 1), no fan-in scaling at all.
    """
    _check_init(config, *DEEP_INITS)
    V, E, H = config.vocab_size, config.n_embd, config.n_hidden
    naive = config.init == "naive"
    init = {"layers.0.weight": rng.randn_array(V * E).reshape(V, E)}        # (V, E)
    for name, fan_out, fan_in in hidden:
        init[name] = (rng.randn_array(fan_out * fan_in).reshape(fan_out, fan_in) if naive
                      else kaiming_normal(rng, fan_out, fan_in, gain("tanh")))
    if naive:
        init[f"{output}.weight"] = rng.randn_array(V * H).reshape(V, H)
    else:
        scale = OUTPUT_SCALE if config.init in ("default", "kaiming") else 1.0
        init[f"{output}.weight"] = kaiming_normal(rng, V, H, gain("linear") * scale)
    init[f"{output}.bias"] = np.zeros(V, dtype=np.float32)
    return init


def _deep_layers(L: ModuleType, backend_name: str) -> None:
    if not hasattr(L, "BatchNorm1d"):
        raise ConfigError(f"the {backend_name} backend has no BatchNorm1d; "
                          "use numpy, torch or torch-module for the deep models")


# The deep models train with plain SGD and a step decay, the protocol of their
# classic recipes (tinylm.recipes), at the sizes of those recipes.
@register("bnmlp", n_hidden=100, n_layers=5, optimizer="sgd", lr=0.1, lr_schedule="step")
def bnmlp(config: ModelConfig, L: ModuleType, rng: RNG) -> Blueprint:
    """A deep MLP with batch normalisation (Ioffe and Szegedy, ICML 2015):
    ``Embedding -> Flatten -> n_layers x [Linear(bias=False), BatchNorm1d,
    Tanh] -> Linear`` over the last ``context`` tokens, Kaiming-initialised
    (He et al., ICCV 2015; see ``_deep_weights`` for the order and options).

    The hidden Linears have no bias: BatchNorm subtracts each channel's mean
    right after, which would cancel it, and supplies its own bias.
    """
    _deep_layers(L, L.__name__)
    V, T, E, H, N = (config.vocab_size, config.context, config.n_embd, config.n_hidden,
                     config.n_layers)
    layers = [L.Embedding(V, E), L.Flatten()]        # (B, T) -> (B, T, E) -> (B, T*E)
    hidden = []
    fan_in = T * E
    for _ in range(N):
        hidden.append((f"layers.{len(layers)}.weight", H, fan_in))
        layers += [L.Linear(fan_in, H, bias=False),  # (B, H)
                   L.BatchNorm1d(H),                 # (B, H)
                   L.Tanh()]                         # (B, H)
        fan_in = H
    output = f"layers.{len(layers)}"
    layers.append(L.Linear(H, V))                    # (B, V)
    return Blueprint(layers, _deep_weights(config, rng, hidden, output), reads=T)


def wavenet_levels(context: int) -> int:
    """How many pairwise-fusion levels a WaveNet needs: log2(context), a power of two."""
    if context < 2 or context & (context - 1):
        raise ConfigError(f"the wavenet model fuses positions in pairs, so its context must be "
                          f"a power of two >= 2 (2, 4, 8, 16...), got {context}")
    return context.bit_length() - 1


@register("wavenet", context=8, n_embd=24, n_hidden=128, optimizer="sgd", lr=0.1,
          lr_schedule="step")
def wavenet(config: ModelConfig, L: ModuleType, rng: RNG) -> Blueprint:
    """The hierarchical model of WaveNet (van den Oord et al., "WaveNet: A
    Generative Model for Raw Audio", 2016), for characters: instead of
    squashing the whole context into one layer, neighbouring positions are
    fused in pairs, level by level, like its tree of dilated causal
    convolutions evaluated at one output position::

        Embedding                                   (B, 8) -> (B, 8, E)
        log2(context) x [FlattenConsecutive(2),     (B, 4, 2E) ... (B, 2H)
                         Linear(bias=False), BatchNorm1d, Tanh]
        Linear                                      (B, H) -> (B, V)

    BatchNorm normalises over batch and time while the time axis remains.
    The context fixes the depth, so ``n_layers`` is not read. Initialisation as
    for ``bnmlp`` (``_deep_weights``).
    """
    _deep_layers(L, L.__name__)
    V, E, H = config.vocab_size, config.n_embd, config.n_hidden
    levels = wavenet_levels(config.context)
    layers = [L.Embedding(V, E)]                     # (B, T, E)
    hidden = []
    fan_in = 2 * E
    for _ in range(levels):
        hidden.append((f"layers.{len(layers) + 1}.weight", H, fan_in))
        layers += [L.FlattenConsecutive(2),          # (B, T/2, 2C), the last level (B, 2C)
                   L.Linear(fan_in, H, bias=False),  # (B, T/2, H)
                   L.BatchNorm1d(H),                 # (B, T/2, H)
                   L.Tanh()]                         # (B, T/2, H)
        fan_in = 2 * H
    output = f"layers.{len(layers)}"
    layers.append(L.Linear(H, V))                    # (B, V)
    return Blueprint(layers, _deep_weights(config, rng, hidden, output), reads=config.context)


# --- sequence models: a prediction at every position ------------------------------------------

def _sequence_layers(L: ModuleType, config: ModelConfig) -> None:
    if not hasattr(L, "SequenceLM"):
        raise ConfigError(f"the {config.model} model needs the numpy, torch or torch-module "
                          "backend")
    if config.block_size < 1:
        raise ConfigError(f"the {config.model} model needs a block size (0 means: from the data, "
                          "which tinylm.train and 'tinylm train' fill in)")


# The reference toolkit's defaults for its Transformer, RNN and GRU: AdamW at lr 5e-4 with
# weight decay 0.01, batch 32.
SEQUENCE_TRAINING = dict(n_embd=64, batch_size=32, optimizer="adamw", lr=5e-4,
                         weight_decay=0.01, lr_schedule="constant")


@register("transformer", n_layers=4, n_heads=4, **SEQUENCE_TRAINING)
def transformer(config: ModelConfig, L: ModuleType, rng: RNG) -> Blueprint:
    """A decoder-only Transformer (Vaswani et al., 2017, in GPT-2's pre-norm layout,
    Radford et al., 2019): see ``tinylm.layers.numpy_layers.Transformer``.

    Initialisation, PyTorch's own defaults as the reference toolkit's model
    gets them, in this order: token then position embeddings N(0, 1); for
    each block the weight then bias of qkv, proj, mlp.0 and mlp.2, uniform in
    +-1/sqrt(fan_in); then lm_head's weight (it has no bias) the same way.
    LayerNorms start at weight 1, bias 0. (GPT-2's N(0, 0.02) trained slower
    at this size: test 2.033 against 1.992 after 10,000 steps at the settings of
    transformer-makemore.)
    """
    _sequence_layers(L, config)
    V, T, C, N = config.vocab_size, config.block_size, config.n_embd, config.n_layers
    net = L.Transformer(V, T, C, config.n_heads, N, dropout=config.dropout)
    init = {"wte.weight": rng.randn_array(V * C).reshape(V, C),
            "wpe.weight": rng.randn_array(T * C).reshape(T, C)}
    for i in range(N):
        init[f"blocks.{i}.ln1.weight"] = np.ones(C, dtype=np.float32)
        init[f"blocks.{i}.ln1.bias"] = np.zeros(C, dtype=np.float32)
        init[f"blocks.{i}.ln2.weight"] = np.ones(C, dtype=np.float32)
        init[f"blocks.{i}.ln2.bias"] = np.zeros(C, dtype=np.float32)
        for name, fan_out, fan_in in (("attn.qkv", 3 * C, C), ("attn.proj", C, C),
                                      ("mlp.0", 4 * C, C), ("mlp.2", C, 4 * C)):
            default_linear(rng, init, f"blocks.{i}.{name}", fan_out, fan_in)
    init["ln_f.weight"], init["ln_f.bias"] = np.ones(C, np.float32), np.zeros(C, np.float32)
    default_linear(rng, init, "lm_head", V, C, bias=False)
    return Blueprint([], init, reads=T, net=net)


CELL_LINEARS = {"rnn": ("xh_to_h",), "gru": ("xh_to_z", "xh_to_r", "xh_to_hbar")}


def _recurrent(config: ModelConfig, L: ModuleType, rng: RNG, cell: str) -> Blueprint:
    """Embedding N(0, 1), then each cell Linear's weight and bias uniform in
    +-1/sqrt(fan_in) (PyTorch's defaults), then the read-out's; the start state is 0."""
    _sequence_layers(L, config)
    V, C, H = config.vocab_size, config.n_embd, config.n_embd2
    net = L.RecurrentLM(V, C, H, cell, dropout=config.dropout)
    init = {"wte.weight": rng.randn_array(V * C).reshape(V, C)}
    cells = [(f"rnn.{name}", H, C + H) for name in CELL_LINEARS[cell]]
    for name, fan_out, fan_in in cells + [("lm_head", V, H)]:
        default_linear(rng, init, name, fan_out, fan_in)
    init["rnn.start"] = np.zeros((1, H), dtype=np.float32)
    return Blueprint([], init, reads=config.block_size, net=net)


@register("rnn", **SEQUENCE_TRAINING)
def rnn(config: ModelConfig, L: ModuleType, rng: RNG) -> Blueprint:
    """A tanh recurrent net (Elman, 1990) read out at every position; see
    ``tinylm.layers.numpy_layers.RNN`` and ``_recurrent`` for the initialisation."""
    return _recurrent(config, L, rng, "rnn")


@register("gru", **SEQUENCE_TRAINING)
def gru(config: ModelConfig, L: ModuleType, rng: RNG) -> Blueprint:
    """A gated recurrent net (Cho et al., 2014) read out at every position; see
    ``tinylm.layers.numpy_layers.GRU`` and ``_recurrent`` for the initialisation."""
    return _recurrent(config, L, rng, "gru")
