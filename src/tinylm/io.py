"""Writing run outputs safely: atomic files, strict JSON, and the out-dir.

A run validates everything it can before it touches the out-dir, and every
file is written to a temporary name, flushed to disk and renamed into
place (the directory is synced too), so a crash, a kill or a full disk
never leaves a half-written config, checkpoint or plot behind: a file is
either the old one or the new one. JSON is strict: a NaN or an infinity is
a bug to refuse, not a token to write.

JSON-lines files are read by one reader, ``parse_jsonl``, which gives each
record to a callback as it is parsed (memory: one line), strictly (any line
that is not JSON is an error) or leniently (the cut last line of a file
still being written is passed over and reported).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

from tinylm.errors import ConfigError


def check_out_dir(path: str | os.PathLike) -> Path:
    """Refuse an out-dir that cannot be one, without creating anything."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"out-dir {str(p)!r} exists and is not a directory")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"out-dir {str(p)!r}: {str(parent)!r} is not a directory")
            break
    return p


def make_out_dir(path: str | os.PathLike) -> Path:
    """Create the out-dir (after validation has passed)."""
    p = check_out_dir(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` atomically through ``write(f)``, which writes to the open file ``f``
    (in pieces, for data too large to hold twice)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes owner-only files; a run's outputs are ordinary files
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry is data too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps(obj: Any, **kwargs: Any) -> str:
    """JSON text of ``obj``; ValueError on NaN or infinity, which standard JSON cannot hold."""
    return json.dumps(obj, allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write a whole JSON-lines file at once."""
    atomic_write_text(path, "".join(dumps(r) + "\n" for r in records))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(dumps(record) + "\n")


class JsonlError(ValueError):
    """A line of a JSON-lines file that is not JSON: ``line`` is its number (from 1)."""

    def __init__(self, line: int, why: str) -> None:
        super().__init__(f"line {line} is not JSON ({why})")
        self.line = line


def parse_jsonl(lines: Iterable[bytes], take: Callable[[Any], None], *, lenient: bool = False,
                loads: Callable[[str], Any] = json.loads) -> bool:
    """Give the value of each non-blank line of ``lines`` (UTF-8 JSON) to ``take`` as it is
    parsed by ``loads``; return whether the last line was cut short.

    Strict (the default): a line that is not JSON, or not UTF-8, raises ``JsonlError``.
    Lenient: a file still being written, or whose writer was killed, may end in a part of
    a line; that line is passed over and True returned. A line that is not JSON with
    another after it is damage, not a write in progress: ``JsonlError`` even so. Bytes
    that are not UTF-8 are read as U+FFFD, since what is read leniently may hold anything.
    """
    errors = "replace" if lenient else "strict"
    bad = None  # (number, why) of a line that is not JSON: a cut last line if nothing follows
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if bad is not None:
            raise JsonlError(*bad)
        try:
            value = loads(line.decode("utf-8", errors=errors))
        except ValueError as e:  # UnicodeDecodeError is one
            bad = (number, str(e)[:120] or type(e).__name__)
            if not lenient:
                raise JsonlError(*bad) from None
            continue
        take(value)
    return bad is not None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every record of the JSON-lines file ``path``, read strictly (see ``parse_jsonl``)."""
    records: list[dict] = []
    with open(path, "rb") as f:
        parse_jsonl(f, records.append)
    return records
