"""A run directory: one transaction log per run, for every kind of model.

Layout of ``-o DIR`` (the n-gram kind has ``model.npz`` and ``grid.jsonl``
instead of weights files)::

    manifest.json        the commit point: binds every part below by SHA-256
    config.json          the run's settings and vocabulary, for people (checked against the manifest)
    train.txt val.txt test.txt     the run's own copy of its splits
    merges.json          a BPE run's tokenizer (tinylm.tokenizer; a char run's vocabulary is
                         in the manifest)
    tokens.npy           a text run's document encoded (memory-mapped)
    weights-000000500.safetensors   model and optimizer arrays at the committed step (runs
                         written before: weights-000000500.npz, still read; see tinylm.checkpoint)
    metrics.jsonl        an append-only log; the manifest says how many bytes of it are committed
    samples.txt loss.png ...       outputs, made again by sample/eval/diagnose at any time
    .lock                held by the one process that writes the directory

Guarantees:

* **Atomic commits.** A save writes a new weights file under a new name,
  flushes it and the metrics log to disk, then replaces manifest.json in one
  rename. At every instant the manifest names a complete, consistent state:
  the previous one or the new one, whatever kills the process when.
* **Binding.** The manifest records the SHA-256 of the splits, the weights
  and the committed prefix of the metrics, and the settings themselves;
  sample, eval and resume verify all of it and refuse a directory whose
  parts disagree (an edited config.json, a swapped split, a tampered file).
  Lines of metrics.jsonl past the committed prefix are records of steps the
  last checkpoint does not hold: readers ignore them, resume drops them.
* **One writer.** A second process that opens the directory for writing
  gets one clear error; a lock left by a killed process is taken over (the
  operating system releases ``flock`` locks when a process dies).
* **Inputs are sacred.** A run never writes into a directory that holds
  its input, a run of another kind, or files it did not make.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tinylm import checkpoint, settings, text, tokenizer as tokenizers
from tinylm.data import EOT, SPLIT_NAMES
from tinylm.errors import CheckpointError, ConfigError, TinylmError
from tinylm.io import (
    atomic_write_bytes, atomic_write_with, check_out_dir, dumps, parse_jsonl, write_json,
)
from tinylm.models import DEFAULT_MODEL, MODEL_DEFAULTS, ModelConfig, build_model
from tinylm.ngram import NgramConfig, NgramModel
from tinylm.recipes import get_recipe
from tinylm.rng import RNG
from tinylm.settings import resolve
from tinylm.train_config import TrainConfig

FORMAT = "tinylm-run"
VERSION = 2
MANIFEST = "manifest.json"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
LOCK = ".lock"
SPLIT_FILES = tuple(f"{name}.txt" for name in SPLIT_NAMES)
TOKENS = "tokens.npy"
WEIGHTS_SUFFIX = ".safetensors"  # what new commits write
WEIGHTS_SUFFIXES = (".safetensors", ".npz")  # what a run directory may hold (.npz: older runs)
# every name a run writes: a directory holding one of them, and no run, is not ours to write
OWN_NAMES = {MANIFEST, CONFIG, METRICS, *SPLIT_FILES, TOKENS, tokenizers.MERGES_FILE, "model.npz",
             "grid.jsonl", "samples.txt", "sample.txt", "loss.png", "bigram.png",
             "diagnostics.jsonl"}


# --- settings of a new run ------------------------------------------------------------------

def resolve_configs(model: str | None, recipe: str | None, explicit: Mapping[str, Any],
                    vocab_size: int = 1) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a new neural run: explicit > recipe > the model's defaults > defaults.

    ``model`` None means the recipe's model; a ``model`` that differs from
    the recipe's is refused rather than silently mixed with its settings.
    """
    layers: list[Mapping[str, Any]] = []
    if recipe is not None:
        chosen = get_recipe(recipe)
        if model is not None and model != chosen.model:
            raise ConfigError(f"--model {model} differs from the model of --recipe {recipe} "
                              f"({chosen.model}); leave --model out or choose another recipe")
        model = chosen.model
        layers.append(_scaled(chosen.settings, explicit))
    model = model or DEFAULT_MODEL
    layers.insert(0, MODEL_DEFAULTS.get(model, {}))
    layers.append({**explicit, "model": model, "recipe": recipe})
    return (resolve(ModelConfig, layers, vocab_size=vocab_size), resolve(TrainConfig, layers))


def _scaled(recipe: Mapping[str, Any], explicit: Mapping[str, Any]) -> Mapping[str, Any]:
    """A recipe's settings for a run of other ``steps``: its warmup scaled with them (a recipe
    shortened to 300 steps keeps its share of warmup instead of being refused for its 500)."""
    if ("steps" in explicit and "warmup" not in explicit and recipe.get("warmup")
            and recipe.get("steps")):
        warmup = round(recipe["warmup"] * explicit["steps"] / recipe["steps"])
        return {**recipe, "warmup": min(warmup, explicit["steps"] - 1)}
    return recipe


def neural_settings(mconfig: ModelConfig, config: TrainConfig) -> dict[str, Any]:
    """What config.json and the manifest say of a neural run's settings."""
    return {"kind": "neural", "model": mconfig.model, "model_config": mconfig.to_dict(),
            "train_config": config.to_dict()}


# --- the directory before a run -------------------------------------------------------------

def check_new_run_dir(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> Path:
    """Refuse an out-dir a new run must not write, without creating anything."""
    out = check_out_dir(out)
    here = out.resolve()
    for path in inputs:
        source = Path(path).resolve()
        if here == source or here in source.parents:
            raise ConfigError(f"the input {str(path)!r} is inside the out-dir {str(out)!r}; a run "
                              "never writes beside its input: choose another -o")
    if not out.is_dir():
        return out
    if (out / MANIFEST).exists():
        kind, model = _kind_of(out)
        hint = ("continue it with --resume or choose another -o" if kind == "neural"
                else "choose another -o, or remove it first")
        raise ConfigError(f"out-dir {str(out)!r} already holds a trained {model} run; {hint}")
    if _unfinished_run(out):
        return out  # our own files of a run that never committed: no one else's data
    clash = sorted(name for name in os.listdir(out) if name in OWN_NAMES or _is_weights(name))
    if clash:
        raise ConfigError(f"out-dir {str(out)!r} holds {clash[0]}, which a run would overwrite, "
                          "and no tinylm run: choose an empty or new directory")
    return out


def _is_weights(name: str) -> bool:
    # both formats: a run written as .npz and resumed commits .safetensors from then on
    return name.startswith("weights-") and name.endswith(WEIGHTS_SUFFIXES)


def _is_temp(name: str) -> bool:
    """The temporary file of an atomic write of ours (tinylm.io) that a kill left behind."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    target = name[1:-len(".tmp")].rpartition(".")[0]  # ".NAME.XXXXXXXX.tmp" -> NAME
    return target in OWN_NAMES or _is_weights(target)


def _unfinished_run(out: Path) -> bool:
    try:
        return json.loads((out / CONFIG).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _kind_of(out: Path) -> tuple[str, str]:
    manifest = read_manifest(out)
    return manifest["kind"], manifest["model"]


class RunLock:
    """The one writer of a run directory: ``flock`` on DIR/.lock, released when the process ends."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise ConfigError(f"run directory {str(out)!r} is in use by another tinylm process "
                              f"(pid {holder}); wait for it to finish or choose another -o") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


# --- writing --------------------------------------------------------------------------------

class RunWriter:
    """A run directory opened for writing: the lock, the metrics log and atomic commits.

    ``create`` starts a new run (splits and config.json, no manifest yet);
    ``reopen`` continues a committed one. ``log`` appends metrics records
    (buffered; they reach the disk at ``flush`` and at every commit);
    ``commit`` makes the current state the directory's state in one rename.
    """

    def __init__(self, out: Path, lock: RunLock, base: dict[str, Any], files: dict[str, str],
                 metrics_bytes: int, metrics_records: int, metrics_hash: "hashlib._Hash") -> None:
        self.out, self.lock, self.base, self.files = out, lock, base, files
        self.metrics_bytes, self.metrics_records, self._hash = metrics_bytes, metrics_records, metrics_hash
        self.metrics = open(out / METRICS, "ab")
        self.arrays: str | None = None  # the weights file the manifest names now
        self.arrays_sha256 = ""
        self._older: str | None = None  # the one before: kept while a reader may still open it
        self._committed: dict | None = None  # the manifest of the last commit
        self._before: dict | None = None  # and of the one before it (see revert)

    @classmethod
    def create(cls, out: str | os.PathLike, inputs: Sequence[str | os.PathLike],
               base: dict[str, Any], tokenizer: tokenizers.Tokenizer, source: str | None,
               lines3: Sequence[Sequence[str] | bytes | memoryview],
               encoded: text.Encoded | None = None) -> "RunWriter":
        """A new run in ``out``: the lock taken, the splits, the tokenizer and config.json
        written.

        A split is a list of lines (each written with its end) or, for a text run, the
        text's UTF-8 bytes, written as they are; a text run's ``encoded`` splits go to
        tokens.npy, their split points and characters to the settings."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out)
        try:
            check_new_run_dir(out, inputs)  # again, under the lock: a run may have landed since
            for name in os.listdir(out):  # an unfinished run's leftovers (checked: ours)
                if name == METRICS or _is_weights(name) or _is_temp(name):
                    os.unlink(out / name)
            entry, tokenizer_files = tokenizer.to_run()
            base = {**base, **entry, "input": source}
            if encoded is not None:
                tokens, lengths = encoded.tokens, encoded.lengths
                base["tokens"] = {"file": TOKENS, "dtype": str(tokens.dtype),
                                  "bounds": [0, lengths[0], lengths[0] + lengths[1], len(tokens)],
                                  "characters": [int(c) for c in encoded.characters]}
            # first: it marks the directory as this run's, so that a kill from here on
            # leaves files a new run into it takes over, not ones it must refuse
            write_json(out / CONFIG, {"format": FORMAT, **base})
            files = {}
            for name, lines in zip(SPLIT_FILES, lines3):
                data = lines if isinstance(lines, (bytes, memoryview)) else \
                    "".join(line + EOT for line in lines).encode("utf-8")
                atomic_write_bytes(out / name, data)
                files[name] = checkpoint.sha256(data)
            for name, data in tokenizer_files.items():
                atomic_write_bytes(out / name, data)
                files[name] = checkpoint.sha256(data)
            if encoded is not None:
                files[TOKENS] = _write_npy(out / TOKENS, encoded.tokens)
            (out / METRICS).write_bytes(b"")
        except BaseException:
            lock.release()
            raise
        return cls(out, lock, base, files, 0, 0, hashlib.sha256())

    @classmethod
    def reopen(cls, run: "Run", lock: RunLock, base: dict[str, Any], keep: int) -> "RunWriter":
        """Continue ``run``, read under ``lock``, with ``base`` as its settings from now on.

        The run keeps its first ``keep`` committed metrics records (an
        extended run drops its old test record); the records past the
        commit, of steps the weights do not hold, are dropped too. The
        manifest is switched to the kept prefix before the file is cut, so a
        kill in between leaves a valid directory.
        """
        out = run.path
        base = {**base, **tokenizers.run_entry(run.manifest), "input": run.manifest["input"]}
        if "tokens" in run.manifest:
            base["tokens"] = run.manifest["tokens"]
        for name in os.listdir(out):  # weights no manifest names any more, a killed write's rest
            if (_is_weights(name) and name != run.manifest["arrays"]["file"]) or _is_temp(name):
                os.unlink(out / name)
        with open(out / METRICS, "rb") as f:
            lines = f.read(run.manifest["metrics"]["bytes"]).splitlines(keepends=True)[:keep]
        kept = b"".join(lines)
        writer = cls(out, lock, base, dict(run.manifest["files"]), len(kept), len(lines),
                     hashlib.sha256(kept))
        writer.arrays = run.manifest["arrays"]["file"]
        writer.arrays_sha256 = run.manifest["arrays"]["sha256"]
        writer.update_settings({})
        writer.commit(run.manifest["state"], {}, writer.arrays)
        os.truncate(out / METRICS, len(kept))
        return writer

    def update_settings(self, changes: dict[str, Any]) -> None:
        """New or changed settings (an n-gram run's chosen model); config.json follows at once."""
        self.base.update(changes)
        write_json(self.out / CONFIG, {"format": FORMAT, **self.base})

    def log(self, record: dict) -> None:
        line = (dumps(record) + "\n").encode("utf-8")
        self.metrics.write(line)
        self._hash.update(line)
        self.metrics_bytes += len(line)
        self.metrics_records += 1

    def flush(self) -> None:
        self.metrics.flush()

    def commit(self, state: dict[str, Any], arrays: checkpoint.Tree, name: str | None = None
               ) -> None:
        """Make ``state`` and ``arrays`` the directory's committed state.

        The arrays go to ``name``, by default ``weights_name`` of the state's step.

        The file the manifest names now is never written over: a commit of
        the same step reuses it (the arrays are the same), a new step gets a
        new file, and the one before the previous is removed only after the
        switch, so a reader that has just read the old manifest still finds
        its file.
        """
        name = name or weights_name(int(state["step"]))
        if name != self.arrays:
            blob = checkpoint.encode(arrays, checkpoint.format_of(name))
            atomic_write_bytes(self.out / name, blob)
            self.arrays_sha256 = checkpoint.sha256(blob)
        self.metrics.flush()
        os.fsync(self.metrics.fileno())
        manifest = {
            "format": FORMAT, "version": VERSION, **self.base, "files": self.files,
            "arrays": {"file": name, "sha256": self.arrays_sha256},
            "metrics": {"records": self.metrics_records, "bytes": self.metrics_bytes,
                        "sha256": self._hash.hexdigest()},
            "state": state,
        }
        write_json(self.out / MANIFEST, manifest)  # the commit: one atomic rename
        self._before, self._committed = self._committed, manifest
        previous = self.arrays
        if self._older is not None and self._older not in (name, previous):
            _unlink(self.out / self._older)
        if previous != name:
            self._older, self.arrays = previous, name

    def revert(self) -> None:
        """Make the commit before the last one the directory's state again; no commit may follow.

        For a run whose last checkpoint turned out to hold weights that
        diverge: the one before is still whole (a commit removes only the
        weights file before the previous one), and the metrics log has only
        grown past its committed prefix.
        """
        if self._before is None:
            return
        write_json(self.out / MANIFEST, self._before)
        current, self.arrays = self.arrays, self._before["arrays"]["file"]
        self.arrays_sha256 = self._before["arrays"]["sha256"]
        if current != self.arrays:
            self._older = current  # named by no manifest now: removed at close
        self._committed, self._before = self._before, None

    def close(self) -> None:
        """Release the directory; of the weights files only the committed one stays."""
        try:
            if not self.metrics.closed:
                self.metrics.close()  # may fail (a full disk): the records past the commit
            if self._older is not None:
                _unlink(self.out / self._older)
                self._older = None
        finally:
            self.lock.release()


class _Hashing:
    """A file that hashes what is written to it (numpy then writes an array in pieces)."""

    def __init__(self, f) -> None:
        self.f, self.digest = f, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.f.write(data)


def _write_npy(path: Path, array: np.ndarray) -> str:
    """Write ``array`` atomically in the .npy format (read back with allow_pickle=False,
    memory-mapped), in pieces rather than as one copy in memory; returns its SHA-256."""
    hashing: list[_Hashing] = []

    def write(f) -> None:
        hashing.append(_Hashing(f))
        np.lib.format.write_array(hashing[-1], np.ascontiguousarray(array), allow_pickle=False)

    atomic_write_with(path, write)
    return hashing[-1].digest.hexdigest()


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def weights_name(step: int) -> str:
    """The weights file of a commit at ``step``: ``weights-000000500.safetensors``."""
    return f"weights-{step:09d}{WEIGHTS_SUFFIX}"


# --- reading --------------------------------------------------------------------------------

@dataclass
class Run:
    """A committed run directory, verified: settings, vocabulary, splits, arrays and metrics."""

    path: Path
    manifest: dict
    tokenizer: tokenizers.Tokenizer
    lines3: tuple[list[str], list[str], list[str]] | None  # a lines run's splits
    arrays: dict
    metrics: list[dict]
    model_config: ModelConfig | None = None  # neural runs
    config: TrainConfig | None = None
    ngram: NgramConfig | None = None  # count runs
    model: Any = field(default=None, repr=False)
    tokens: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # a text run's splits, mapped

    @property
    def format(self) -> str:
        """"lines" or "text": how the run read its input."""
        return "text" if "tokens" in self.manifest else "lines"

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def characters(self) -> tuple[int | None, ...]:
        """A text run's characters per split (None: one a token, as runs made before BPE)."""
        said = self.manifest.get("tokens", {}).get("characters")
        return tuple(int(c) for c in said) if said else (None, None, None)

    @property
    def tokenizer_settings(self) -> tokenizers.TokenizerSettings:
        return tokenizers.settings_of(self.manifest)

    @property
    def step(self) -> int:
        return int(self.manifest["state"].get("step", 0))

    @property
    def loader(self) -> str:
        return self.config.loader if self.config is not None else self.manifest["loader"]


def read_manifest(out: str | os.PathLike) -> dict:
    out = Path(out)
    if not out.is_dir():
        raise CheckpointError(f"run directory {str(out)!r} does not exist")
    path = out / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"no run in {str(out)!r} ({MANIFEST} not found: no checkpoint was "
                              "ever committed there)") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{str(path)!r} is not valid JSON (truncated or modified?)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        if isinstance(manifest, dict) and manifest.get("model") == "micrograd":
            raise CheckpointError(f"{str(out)!r} holds a micrograd demo run: it has no language "
                                  "model (see its metrics.jsonl, regions.png and graph.svg)")
        raise CheckpointError(f"{str(path)!r} is not a tinylm run manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has run format version {manifest.get('version')!r}; "
                              f"this tinylm reads version {VERSION}")
    if manifest.get("kind") not in ("neural", "ngram"):
        raise CheckpointError(f"{str(path)!r} names an unknown kind of run")
    return manifest


def kept_part(arrays: Mapping[str, Any]) -> str:
    """Which part of a run's arrays holds the weights it keeps: ``"best"`` (by val, under
    ``--keep best``), else ``"average"`` (of the weights, under ``--ema``), else ``"model"``
    (those of its last step)."""
    return next(part for part in ("best", "average", "model") if part in arrays)


def open_run(out: str | os.PathLike, backend: str | None = None, weights: str = "kept") -> Run:
    """The committed run in ``out``, every part verified, its model built (on ``backend``)
    with the weights it keeps (``weights="kept"``: ``kept_part``'s) or those of its last
    step (``"last"``: what its optimizer state belongs to)."""
    out = Path(out)
    manifest = read_manifest(out)
    try:
        files, arrays_entry, committed = (manifest["files"], manifest["arrays"],
                                          manifest["metrics"])
        tokenizer = tokenizers.from_run(manifest, lambda name: _read_checked(out, name,
                                                                             files[name]))
        lines3 = tokens = None
        if "tokens" in manifest:
            for name in SPLIT_FILES:
                _check_file(out, name, files[name])
            tokens = _read_tokens(out, manifest["tokens"], files[TOKENS], tokenizer.vocab_size)
        else:
            lines3 = tuple(_read_split(out, name, files[name]) for name in SPLIT_FILES)
        _check_config_file(out, manifest)
        arrays = checkpoint.decode(_read(out / arrays_entry["file"]), arrays_entry["sha256"],
                                   f"{arrays_entry['file']} in {str(out)!r}",
                                   checkpoint.format_of(arrays_entry["file"]))
        metrics = _read_metrics(out, committed)
        run = Run(out, manifest, tokenizer, lines3, arrays, metrics,  # type: ignore[arg-type]
                  tokens=tokens)
        if run.kind == "neural":
            run.model_config = ModelConfig.from_dict(manifest["model_config"])
            run.config = TrainConfig.from_dict(manifest["train_config"])
            if run.model_config.vocab_size != tokenizer.vocab_size:
                raise CheckpointError("the model and the vocabulary disagree")
            # the initial draw is overwritten by the saved arrays; any seed will do
            run.model = build_model(run.model_config, backend or run.config.backend, RNG(1))
            chosen = arrays[kept_part(arrays) if weights == "kept" else "model"]
            run.model.load_state_dict(chosen)
            if hasattr(run.model, "dtype"):  # a torch model evaluates in the run's precision
                run.model.dtype = run.config.dtype
        else:
            run.ngram = NgramConfig(**manifest["ngram"])
            if run.ngram.vocab_size != tokenizer.vocab_size:
                raise CheckpointError("the model and the vocabulary disagree")
            run.model = NgramModel.from_arrays(run.ngram, arrays)
    except CheckpointError as e:
        raise CheckpointError(f"the run in {str(out)!r} cannot be used: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"the run in {str(out)!r} has a malformed manifest ({e})") from None
    except TinylmError as e:
        raise CheckpointError(f"the run in {str(out)!r} is invalid: {e}") from None
    return run


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        raise CheckpointError(f"{path.name} is missing or unreadable") from None


def _read_split(out: Path, name: str, expected: str) -> list[str]:
    """A lines run's split, refused unless its SHA-256 is the committed one."""
    data = _read_checked(out, name, expected, "the split")
    return [line for line in data.decode("utf-8").split(EOT) if line]


def _read_checked(out: Path, name: str, expected: str, what: str = "the one") -> bytes:
    """A small run file's bytes, refused unless its SHA-256 is the committed one; the
    refusal calls the file ``what`` the run was trained on."""
    data = _read(out / name)
    if checkpoint.sha256(data) != expected:
        raise CheckpointError(f"{name} is not {what} the run was trained on (modified?)")
    return data


def _check_file(out: Path, name: str, expected: str) -> None:
    """Refuse a file whose SHA-256 is not the one committed; read in pieces, not held."""
    digest = hashlib.sha256()
    try:
        with open(out / name, "rb") as f:
            while piece := f.read(1 << 22):
                digest.update(piece)
    except OSError:
        raise CheckpointError(f"{name} is missing or unreadable") from None
    if digest.hexdigest() != expected:
        raise CheckpointError(f"{name} is not the one the run was trained on (modified?)")


def _read_tokens(out: Path, entry: dict, expected: str, vocab_size: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A text run's three splits as read-only memory maps of tokens.npy, verified."""
    _check_file(out, entry["file"], expected)
    try:
        tokens = np.load(out / entry["file"], mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{entry['file']} is not a token array ({e})") from None
    bounds = [int(b) for b in entry["bounds"]]
    if (tokens.ndim != 1 or str(tokens.dtype) != entry["dtype"] or len(bounds) != 4
            or bounds[0] != 0 or bounds[-1] != len(tokens) or bounds != sorted(bounds)):
        raise CheckpointError(f"{entry['file']} does not match the run's split points")
    if len(tokens) and int(tokens.max()) >= vocab_size:  # one pass; it is hashed anyway
        raise CheckpointError(f"{entry['file']} holds ids outside the vocabulary")
    return tuple(tokens[lo:hi] for lo, hi in zip(bounds, bounds[1:]))  # type: ignore[return-value]


def map_tokens(out: str | os.PathLike) -> np.ndarray:
    """A text run's tokens.npy, memory-mapped read-only (what a run has just written)."""
    return np.load(Path(out) / TOKENS, mmap_mode="r", allow_pickle=False)


def _check_config_file(out: Path, manifest: dict) -> None:
    """config.json must say what the manifest says, but for what --resume may change."""
    try:
        said = json.loads((out / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{CONFIG} is missing or not valid JSON") from None
    free = {f.name for f in settings.setting_fields(TrainConfig) if settings.spec(f)["resume"]}

    def fixed(d: Any) -> Any:
        if not isinstance(d, dict):
            return d
        d = {k: v for k, v in d.items() if k not in ("format", "version", "files", "arrays",
                                                      "metrics", "state")}
        if isinstance(d.get("train_config"), dict):
            d["train_config"] = {k: v for k, v in d["train_config"].items() if k not in free}
        return d

    if fixed(said) != fixed(manifest):
        raise CheckpointError(f"{CONFIG} says other settings than the run was trained with "
                              f"({MANIFEST}): it was edited; tinylm never changes a trained run "
                              "through it; restore it, or train a new run")


def _read_metrics(out: Path, committed: dict) -> list[dict]:
    """The metrics records the manifest commits: the first ``bytes`` of metrics.jsonl, checked
    against its SHA-256 (what lies past them was written after the commit and is no record of
    the run), read strictly."""
    try:
        with open(out / METRICS, "rb") as f:
            data = f.read(committed["bytes"])
    except OSError:
        raise CheckpointError(f"{METRICS} is missing or unreadable") from None
    if len(data) != committed["bytes"] or checkpoint.sha256(data) != committed["sha256"]:
        raise CheckpointError(f"{METRICS} does not hold the records the run committed (modified?)")
    records: list[dict] = []
    parse_jsonl(data.splitlines(), records.append)
    if len(records) != committed["records"]:
        raise CheckpointError(f"{METRICS} does not hold the records the run committed")
    return records
