"""A trained run in the formats the rest of the field reads: Hugging Face Transformers and ONNX.

``export(run_dir, "hf", out)`` writes a Transformer run as a GPT-2 checkpoint
directory (``config.json``, ``model.safetensors``, a ``tokenizer.json`` of
characters or of the run's byte-level BPE, and what ``AutoTokenizer`` needs), so that
``transformers.AutoModelForCausalLM.from_pretrained(out)`` computes tinylm's
logits. The layouts agree: tinylm's Transformer is GPT-2's pre-norm decoder
(``qkv`` makes queries, keys and values side by side and each is cut into
heads of consecutive channels, as GPT-2's ``c_attn`` is; the GELU is the tanh
form, GPT-2's ``gelu_new``); only GPT-2's ``Conv1D`` holds its weight as
(in, out), the transpose of ``nn.Linear``'s, and tinylm's output head is not
tied to the token embedding (``tie_word_embeddings=False``).

``export(run_dir, "onnx", out)`` writes any neural model (bigram, mlp, bnmlp,
wavenet, transformer, rnn, gru) through ``torch.onnx.export``: the model is
built on the torch-module backend from the run's weights, whatever backend
trained it (every backend shares the state-dict names and layouts).

Every export is checked before it is put in place: the written files are
loaded back (by transformers, by onnxruntime) and their logits must equal
those of the run's own model within ``TOLERANCE``. Outputs are written under
a temporary name and renamed into place; an existing output is replaced only
if it is an earlier tinylm export, and the run directory is only read.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

import numpy as np

from tinylm import __version__, bpe, pytorch, runs
from tinylm.data import EOT
from tinylm.errors import ConfigError, TinylmError
from tinylm.io import atomic_write_bytes, check_out_dir, dumps, fsync_dir
from tinylm.models import FIXED_WINDOW, SEQUENCE
from tinylm.rng import RNG
from tinylm.sample import eval_mode
from tinylm.tokenizer import BPETokenizer

TARGETS = ("hf", "onnx")
HF_MODELS = ("transformer",)
ONNX_MODELS = ("bigram",) + FIXED_WINDOW + SEQUENCE
TOLERANCE = 1e-5  # the largest |logit difference| an export may show against tinylm's own
CHECK_TEXT = 4000  # characters of the train split the exported tokenizer must encode as tinylm
FORMAT = "tinylm-export"
MARKER = "tinylm_export.json"  # in an HF export: what it was made from (and that it is ours)
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", MARKER)
_PACKAGES = {"hf": ("torch", "safetensors", "tokenizers", "transformers"),
             "onnx": ("torch", "onnx", "onnxscript", "onnxruntime")}


class ExportError(TinylmError):
    """An export whose output does not compute what the run computes: nothing was written."""


@dataclass(frozen=True)
class Exported:
    """What an export wrote: where, from which run and step, and how closely it was checked."""

    target: str
    path: Path
    files: tuple[str, ...]
    model: str
    step: int
    weights: str  # "best" (the run kept its best weights by val), "average" (--ema) or "last"
    max_error: float  # the largest |logit difference| against the run's own model


def export(run_dir: str | os.PathLike, to: str, out: str | os.PathLike) -> Exported:
    """Export the committed run in ``run_dir`` to ``out``: ``to`` is "hf" (a directory) or
    "onnx" (a file). Raises a ``TinylmError`` with one line for whatever cannot be done."""
    if to not in TARGETS:
        raise ConfigError(f"unknown export target {to!r}; choose one of {', '.join(TARGETS)}")
    run_dir, out = Path(run_dir), Path(out)
    _require(to)
    _check_apart(run_dir, out)
    _check_target(out, to)  # before the run is read: a refusal costs nothing
    run = runs.open_run(run_dir)
    if run.kind != "neural":
        raise ConfigError(f"the run in {str(run_dir)!r} is an n-gram count model; only neural "
                          "runs export (its count tables are model.npz in the run)")
    model = run.model_config.model
    if to == "hf" and model not in HF_MODELS:
        raise ConfigError(f"--to hf writes GPT-2 checkpoints, which only a transformer run "
                          f"fits; the run in {str(run_dir)!r} is a {model} model (--to onnx "
                          "exports every neural model)")
    if hasattr(run.model, "dtype"):
        # a run trained under autocast is still float32 weights; the export computes in float32
        # and is compared with tinylm computing in float32
        run.model.dtype = "float32"
    return (_export_hf if to == "hf" else _export_onnx)(run, out)


def _check_apart(run_dir: Path, out: Path) -> None:
    here, there = out.resolve(), run_dir.resolve()
    if here == there or there in here.parents or here in there.parents:
        raise ConfigError(f"the export {str(out)!r} would be inside the run directory "
                          f"{str(run_dir)!r} or hold it; an export never writes there: choose "
                          "another OUT")


def _check_target(out: Path, to: str) -> None:
    """Refuse an ``out`` that exists and is not an earlier export of the same kind."""
    check_out_dir(out.parent)
    if not (out.exists() or out.is_symlink()):
        return
    if to == "hf":
        if out.is_dir() and not out.is_symlink():
            names = os.listdir(out)
            if not names or (MARKER in names and set(names) <= set(HF_FILES)
                             and _marker(out).get("format") == FORMAT):
                return
        raise ConfigError(f"{str(out)!r} exists and is not an earlier tinylm export to Hugging "
                          "Face: it is left alone; choose another OUT or remove it")
    if not (out.is_file() and not out.is_symlink() and onnx_metadata(out).get("tinylm.format")
            == FORMAT):
        raise ConfigError(f"{str(out)!r} exists and is not an earlier tinylm export to ONNX: it "
                          "is left alone; choose another OUT or remove it")


def _marker(out: Path) -> dict:
    try:
        said = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return said if isinstance(said, dict) else {}


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata properties of the ONNX model in ``path`` ({} if it is not one)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError, RuntimeError):
        return {}
    return {p.key: p.value for p in model.metadata_props}


def _require(to: str) -> None:
    # found, not imported: transformers alone takes seconds, and a refusal should not
    missing = [name for name in _PACKAGES[to] if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"--to {to} needs {', '.join(missing)}: pip install 'tinylm[export]'")


def _kept(run: runs.Run) -> str:
    part = runs.kept_part(run.arrays)
    return "last" if part == "model" else part


def check_ids(vocab_size: int, rows: int, cols: int, seed: int = 1) -> np.ndarray:
    """Token ids to compare logits on: (rows, cols), every id equally likely, int64."""
    return (RNG(seed).random_u32_array(rows * cols) % np.uint64(vocab_size)).astype(
        np.int64).reshape(rows, cols)


def reference_logits(model: Any, idx: np.ndarray) -> np.ndarray:
    """The logits of a tinylm model (any backend) on ``idx``, in eval mode, float32."""
    with eval_mode(model):
        logits, _ = model.forward(idx)
    return np.asarray(model.to_numpy(logits), dtype=np.float32)


def _check(what: str, got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        raise ExportError(f"the {what} gives logits of shape {got.shape}, tinylm's are "
                          f"{want.shape}: nothing was written")
    error = float(np.max(np.abs(got.astype(np.float64) - want)))
    if not error <= TOLERANCE:
        raise ExportError(f"the {what} computes logits {error:.2g} away from tinylm's (more than "
                          f"{TOLERANCE:g}): nothing was written")
    return error


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _provenance(run: runs.Run, to: str, error: float) -> dict[str, Any]:
    return {"format": FORMAT, "version": 1, "target": to, "tinylm": __version__,
            "run": str(run.path), "model": run.model_config.model, "step": run.step,
            "weights": _kept(run), "arrays": dict(run.manifest["arrays"]),
            "max_abs_logit_error": error}


# --- Hugging Face: GPT-2 -----------------------------------------------------------------------

def gpt2_config(run: runs.Run) -> dict[str, Any]:
    """The GPT-2 ``config.json`` of a Transformer run: its sizes, and the activation and the
    LayerNorm epsilon read from the torch modules tinylm computes with."""
    mc = run.model_config
    net = _torch_net(run)
    gelu = net.blocks[0].mlp[1]
    # tinylm's GELU is the tanh approximation (numpy_layers.GELU): GPT-2's own "gelu_new"
    activation = "gelu_new" if getattr(gelu, "approximate", "none") == "tanh" else "gelu"
    eot = run.tokenizer.eot
    # an item ends at its newline (also the padding); a passage of a text run runs on
    eos = eot if run.format == "lines" else None
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": mc.vocab_size, "n_positions": mc.block_size, "n_embd": mc.n_embd,
        "n_layer": mc.n_layers, "n_head": mc.n_heads, "n_inner": 4 * mc.n_embd,
        "activation_function": activation, "layer_norm_epsilon": float(net.ln_f.eps),
        # tinylm drops out where GPT-2 does: embeddings, attention weights, both residuals
        "embd_pdrop": mc.dropout, "attn_pdrop": mc.dropout, "resid_pdrop": mc.dropout,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": False,
        "initializer_range": 0.02, "use_cache": True,
        "bos_token_id": eot, "eos_token_id": eos, "pad_token_id": eos,
        "dtype": "float32", "torch_dtype": "float32",
    }


def gpt2_state_dict(state: Mapping[str, np.ndarray], n_layers: int) -> dict[str, np.ndarray]:
    """tinylm Transformer weights under GPT2LMHeadModel's names, in its layouts.

    GPT-2's ``Conv1D`` computes ``x @ W + b`` with W (in, out): the transpose
    of ``nn.Linear``'s (out, in). ``qkv`` needs no reordering: both cut its
    output into q, k, v (C channels each) and each of those into heads of
    consecutive channels.
    """
    def t(name: str) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(state[name]).T)

    out = {"transformer.wte.weight": state["wte.weight"],
           "transformer.wpe.weight": state["wpe.weight"],
           "transformer.ln_f.weight": state["ln_f.weight"],
           "transformer.ln_f.bias": state["ln_f.bias"],
           "lm_head.weight": state["lm_head.weight"]}
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[f"{theirs}{b}.weight"] = state[f"{ours}{a}.weight"]
            out[f"{theirs}{b}.bias"] = state[f"{ours}{a}.bias"]
        for a, b in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                     ("mlp.0", "mlp.c_fc"), ("mlp.2", "mlp.c_proj")):
            out[f"{theirs}{b}.weight"] = t(f"{ours}{a}.weight")       # (in, out)
            out[f"{theirs}{b}.bias"] = state[f"{ours}{a}.bias"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def char_tokenizer(itos: list[str] | tuple[str, ...]):
    """A ``tokenizers.Tokenizer`` of single characters with tinylm's ids.

    A BPE model without merges splits any text into characters and looks
    each up in the vocabulary: one character, one token. It starts every
    text with the end-of-text token "\\n", as tinylm starts an item or a
    passage (``add_special_tokens=False`` leaves it out); decoding joins the
    characters with nothing between them. A character outside the
    vocabulary is dropped (tinylm refuses it; a tokenizer cannot).
    """
    from tokenizers import Tokenizer, decoders, models, processors

    vocab = {ch: i for i, ch in enumerate(itos)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B:1", special_tokens=[(EOT, vocab[EOT])])
    return tokenizer


def bpe_tokenizer(model: bpe.BPE):
    """A ``tokenizers.Tokenizer`` that encodes as tinylm's byte-level BPE ``model``, ids and all.

    Its ByteLevel pre-tokenizer shows each byte as one character (the printable bytes
    33-126, 161-172 and 174-255 as themselves, the others as 256, 257... in byte order), so a
    token is the string of its bytes' characters and a merge the pair of its halves' strings.
    The ``tokenizers`` BPE merges by rank, the lowest first and, within a rank, left to right:
    the order tinylm learned its merges in, since a merge only makes pairs of later ones.
    Split ``gpt4`` cuts by the same pattern first. Every text starts with the newline byte's
    token, tinylm's end of text. ``ExportError`` where two tokens are the same bytes (BPE
    can learn them by two routes), which a tokenizer.json cannot hold apart.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    shown = _byte_characters()
    vocab: dict[str, int] = {}
    for token in range(model.vocab_size):
        text = "".join(shown[b] for b in model.token_bytes(token))
        if vocab.setdefault(text, token) != token:
            raise ExportError(f"tokens {vocab[text]} and {token} of the run's BPE are the same "
                              "bytes, which a tokenizer.json cannot tell apart: nothing was "
                              "written (--to onnx exports the model)")
    itos = list(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[(itos[a], itos[b]) for a, b in
                                                          model.merges], unk_token=None))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.pre_tokenizer = byte_level if model.split == "none" else pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(bpe.GPT4_PATTERN), behavior="isolated"), byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    eot = itos[bpe.NEWLINE]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{eot} $A", pair=f"{eot} $A {eot} $B:1", special_tokens=[(eot, bpe.NEWLINE)])
    return tokenizer


def _byte_characters() -> list[str]:
    """The character ByteLevel shows each byte as (see ``bpe_tokenizer``)."""
    kept = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(others)) for b in range(256)]


def hf_tokenizer(run: runs.Run):
    """The ``tokenizers.Tokenizer`` of a run: of characters, or of its byte-level BPE."""
    if isinstance(run.tokenizer, BPETokenizer):
        return bpe_tokenizer(run.tokenizer.model)
    return char_tokenizer(run.tokenizer.itos)


def _tokenizer_config(run: runs.Run, eot: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json. A lines run's end of text ``eot``
    ("\\n", or its byte's character in a BPE's tokenizer.json) is its beginning and end of
    text (and padding), so that decoding with skip_special_tokens (what pipeline() does)
    gives an item without it; a text run declares none, so that a passage keeps its line
    breaks."""
    special = {"bos_token": eot, "eos_token": eot, "pad_token": eot} if run.format == "lines" \
        else {}
    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              "model_max_length": run.model_config.block_size,
              "clean_up_tokenization_spaces": False, "add_prefix_space": False, **special}
    return config, special


def _export_hf(run: runs.Run, out: Path) -> Exported:
    from safetensors.numpy import save

    mc = run.model_config
    config = gpt2_config(run)
    tensors = gpt2_state_dict(run.model.state_dict(), mc.n_layers)
    tokenizer = hf_tokenizer(run)
    tokenizer_config, special = _tokenizer_config(run, tokenizer.id_to_token(run.tokenizer.eot))
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                  "pad_token_id": config["pad_token_id"], "do_sample": False,
                  # GPT-2 has no position past n_positions: it cannot slide a window as tinylm
                  "max_length": mc.block_size}
    with _staging(out) as tmp:
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", generation)
        # transformers wants the "format" entry of the header's metadata
        atomic_write_bytes(tmp / "model.safetensors", save(tensors, metadata={"format": "pt"}))
        atomic_write_bytes(tmp / "tokenizer.json",
                           tokenizer.to_str(pretty=True).encode("utf-8"))
        _write_json(tmp / "tokenizer_config.json", tokenizer_config)
        _write_json(tmp / "special_tokens_map.json", special)
        error = _check_hf(run, tmp)
        _write_json(tmp / MARKER, _provenance(run, "hf", error))
    return Exported("hf", out, HF_FILES, mc.model, run.step, _kept(run), error)


def _check_hf(run: runs.Run, path: Path) -> float:
    """Load ``path`` with transformers: its logits must be tinylm's, its tokenizer tinylm's."""
    torch = pytorch.load()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # every token's text (a character run's: every id once, in order), and some of the data:
    # its first characters only, read as such (a large train split is never held whole)
    with open(run.path / "train.txt", encoding="utf-8") as f:
        text = "".join(run.tokenizer.itos) + f.read(CHECK_TEXT)
    with _quiet(hf=True):
        hf = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids != run.tokenizer.encode(text):
        raise ExportError("the exported tokenizer does not give tinylm's ids: nothing was written")
    idx = torch.from_numpy(check_ids(run.model_config.vocab_size, 2, run.model_config.block_size))
    with torch.no_grad():
        got = hf(idx, attention_mask=torch.ones_like(idx)).logits.numpy()
    return _check("Hugging Face model", got, reference_logits(run.model, idx.numpy()))


# --- ONNX ----------------------------------------------------------------------------------------

def torch_module_model(run: runs.Run) -> Any:
    """The run's model on the torch-module backend, with the weights the run keeps (a numpy
    or raw-tensor run's arrays load as they are: every backend names and lays them out alike)."""
    from tinylm.models import build_model

    model = build_model(run.model_config, "torch-module", RNG(1))  # the draw is overwritten
    model.load_state_dict(run.model.state_dict())
    return model.eval()


def _torch_net(run: runs.Run) -> Any:
    return torch_module_model(run).net


def _onnx_model(run: runs.Run):
    """The ``onnx.ModelProto`` of the run: input ``idx`` (batch, T) int64, output ``logits``."""
    torch = pytorch.load()

    model = torch_module_model(run)
    sequence = model.per_position

    class Logits(torch.nn.Module):
        """The network alone: ids in, logits out (no loss, no cache)."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.net(idx)

    T = model.context if sequence else model.reads
    axes: dict[int, Any] = {0: torch.export.Dim("batch")}
    if run.model_config.model == "transformer":
        # a recurrent net's loop over positions is unrolled: its T is the block size
        axes[1] = torch.export.Dim("T", min=1, max=T)
    example = torch.from_numpy(check_ids(run.model_config.vocab_size, 2, T))
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(Logits(model.net).eval(), (example,), dynamo=True,
                                    input_names=["idx"], output_names=["logits"],
                                    dynamic_shapes={"idx": axes}, external_data=False,
                                    verbose=False)
    return program.model_proto, T, bool(sequence)


def _export_onnx(run: runs.Run, out: Path) -> Exported:
    import onnxruntime

    proto, T, sequence = _onnx_model(run)
    dynamic_T = run.model_config.model == "transformer"
    idx = check_ids(run.model_config.vocab_size, 3, T)
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    error = _check("ONNX model", session.run(None, {"idx": idx})[0],
                   reference_logits(run.model, idx))
    if dynamic_T and T > 1:
        short = idx[:, : T // 2]
        error = max(error, _check("ONNX model", session.run(None, {"idx": short})[0],
                                  reference_logits(run.model, short)))
    # the tokenizer as the run keeps it: a char run's vocabulary, a BPE's settings and merges
    entry, files = run.tokenizer.to_run()
    meta = {"tinylm.format": FORMAT, "tinylm.export": dumps(_provenance(run, "onnx", error)),
            **{f"tinylm.{key}": dumps(value, ensure_ascii=False) for key, value in entry.items()},
            **{f"tinylm.{name}": blob.decode("utf-8") for name, blob in files.items()},
            "tinylm.input": ("idx (batch, T) int64 token ids, 1 <= T <= " if dynamic_T
                             else "idx (batch, T) int64 token ids, T = ") + str(T)
                            + (", logits (batch, T, vocab) at every position" if sequence
                               else " (the last tokens of the context), logits (batch, vocab)")}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "tinylm", __version__
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, proto.SerializeToString())
    return Exported("onnx", out, (out.name,), run.model_config.model, run.step, _kept(run), error)


@contextlib.contextmanager
def _quiet(hf: bool = False):
    """Keep the exporters' and loaders' own lines (a missing torchvision, progress bars, a
    long tokenizer check) out of the command's output: the library says nothing itself."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    caught = warnings.catch_warnings()
    caught.__enter__()
    warnings.simplefilter("ignore")  # their deprecation notices are for their own callers
    if hf:
        from transformers.utils import logging as hf_logging

        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        caught.__exit__(None, None, None)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if hf:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _staging(out: Path):
    """A fresh directory beside ``out`` to write an export into; on success it replaces
    ``out`` (an empty directory or an earlier export) by renames, else it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only
        old = None
        if out.exists():
            # one rename cannot replace a directory that holds files: the earlier export
            # steps aside first, and goes only once the new one is in place
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.rename(out, old / out.name)
        os.rename(tmp, out)
        fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- loading a run's weights into PyTorch -----------------------------------------------------

V = TypeVar("V")


def module_state_dict(tensors: Mapping[str, V], model: str, part: str = "model") -> dict[str, V]:
    """The ``part`` of a run's weights file ("model", or ``tinylm.runs.kept_part``'s) under
    the names of the torch-module backend's ``nn.Module`` (``run.model.net``).

    ``tensors`` is what ``safetensors.torch.load_file`` reads from ``weights-<step>.safetensors``
    (flat names ``model/blocks.0.attn.qkv.weight``...). A sequence model's network names its
    tensors as tinylm does, so only the ``model/`` prefix goes; a fixed-window model's is an
    ``nn.Sequential``, whose names lack tinylm's ``layers.`` too.
    """
    prefix = f"{part}/" + ("" if model in SEQUENCE else "layers.")
    picked = {name[len(prefix):]: value for name, value in tensors.items()
              if name.startswith(prefix)}
    if not picked:
        raise ConfigError(f"the weights hold no {part!r} part for a {model} model")
    return picked
