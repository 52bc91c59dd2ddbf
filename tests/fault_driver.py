"""Run ``tinylm`` commands with a fault injected at the K-th write boundary.

Used by tests/test_faults.py as a subprocess::

    python tests/fault_driver.py SPEC.json

The driver imports tinylm once, then forks one child per command, so a
sweep over every boundary of a run costs milliseconds per case, not an
interpreter start. Each child runs ``tinylm.cli.main`` with its stdout and
stderr in files; a child that dies by a signal is reported as such.

The boundaries of a write are the calls of ``tinylm.io.atomic_write_bytes``
(before anything of the file exists), ``os.fsync`` (after the data, before
it is durable; a directory's fsync: after a rename), ``os.replace`` (before
the rename), ``os.truncate`` and ``os.unlink``. In a ``kill`` fault the K-th
boundary does ``os.kill(os.getpid(), SIGKILL)``. In an ``enospc`` fault the
K-th write of data into the run directory (a file's ``write``/``flush`` or
an ``os.fsync``) writes half of its bytes and raises ``OSError(ENOSPC)``,
and so does every write after it: the disk stays full until the command
ends.

SPEC (JSON)::

    {"commands": [{"name": "...", "argv": [...], "fault": null | {"kind": "kill"|"enospc",
                   "k": K} | {"kind": "kill", "label": "os.fsync metrics.jsonl", "nth": 3},
                   "copy": [SRC, DST] (copied before the command runs, DST must not exist),
                   "rmtree": PATH (removed before the command runs)}, ...]}

The result, as JSON on stdout, is one entry per command: ``name``,
``signal`` (the signal that ended it, or null), ``rc``, ``seconds``, ``out``, ``err``,
``calls`` (the labels of the boundaries it passed, in order), ``listing``
(the names in its run directory when it ended, or null).
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import signal
import sys
import time

sys.modules["matplotlib"] = None  # type: ignore[assignment]  # no plots: faster, and not under test

import tinylm.io  # noqa: E402
from tinylm.cli import main  # noqa: E402

_real = {name: getattr(os, name) for name in ("replace", "fsync", "truncate", "unlink", "fdopen")}
_real_atomic = tinylm.io.atomic_write_bytes
_real_open = builtins.open


def _fd_name(fd: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return "?"


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class _Faults:
    def __init__(self, fault: dict | None, run_dir: str | None) -> None:
        self.fault = fault or {}
        self.kind = self.fault.get("kind")
        self.calls: list[str] = []
        self.writes = 0
        self.full = False
        self.run_dir = os.path.realpath(run_dir) if run_dir else None
        self.seen_label = 0

    # --- kill -9 at a boundary ---

    def boundary(self, label: str) -> None:
        if self.kind == "enospc":
            return  # there the calls are the writes
        self.calls.append(label)
        if self.kind != "kill":
            return
        if "k" in self.fault:
            hit = len(self.calls) == self.fault["k"]
        else:
            hit = label == self.fault["label"]
            if hit:
                self.seen_label += 1
                hit = self.seen_label == self.fault.get("nth", 1)
        if hit:
            self._dump()
            os.kill(os.getpid(), signal.SIGKILL)

    # --- a full disk ---

    def in_run_dir(self, path: str) -> bool:
        return bool(self.run_dir) and os.path.realpath(path).startswith(self.run_dir + os.sep)

    def write_call(self, label: str) -> bool:
        """True if this write must fail (the disk is full from the K-th write on)."""
        if self.kind != "enospc":
            return False
        self.writes += 1
        self.calls.append(label)
        if self.writes >= self.fault["k"]:
            self.full = True
        return self.full

    def _dump(self) -> None:
        with _real_open(os.environ["FAULT_CALLS"], "w") as f:
            json.dump(self.calls, f)

    def install(self) -> None:
        faults = self

        def replace(src, dst, *a, **kw):
            faults.boundary(f"os.replace {os.path.basename(os.fspath(dst))}")
            return _real["replace"](src, dst, *a, **kw)

        def fsync(fd):
            fd = fd if isinstance(fd, int) else fd.fileno()
            path = _fd_path(fd)
            label = "os.fsync (directory)" if os.path.isdir(path) else f"os.fsync {_fd_name(fd)}"
            faults.boundary(label)
            if faults.in_run_dir(path) and faults.write_call(label):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return _real["fsync"](fd)

        def truncate(path, length):
            faults.boundary(f"os.truncate {os.path.basename(os.fspath(path))}")
            return _real["truncate"](path, length)

        def unlink(path, *a, **kw):
            faults.boundary(f"os.unlink {os.path.basename(os.fspath(path))}")
            return _real["unlink"](path, *a, **kw)

        def atomic_write_bytes(path, data):
            faults.boundary(f"atomic_write_bytes {os.path.basename(os.fspath(path))}")
            return _real_atomic(path, data)

        def fdopen(fd, *a, **kw):
            f = _real["fdopen"](fd, *a, **kw)
            path = _fd_path(fd)
            return _Full(f, faults, os.path.basename(path)) if faults.in_run_dir(path) else f

        def open_(file, *a, **kw):
            f = _real_open(file, *a, **kw)
            if isinstance(file, (str, bytes, os.PathLike)) and faults.in_run_dir(os.fsdecode(file)):
                return _Full(f, faults, os.path.basename(os.fsdecode(file)))
            return f

        os.replace, os.fsync, os.truncate, os.unlink = replace, fsync, truncate, unlink
        if self.kind == "enospc":
            os.fdopen = fdopen
            builtins.open = open_
        for name, module in list(sys.modules.items()):
            if name.startswith("tinylm") and getattr(module, "atomic_write_bytes", None) is _real_atomic:
                module.atomic_write_bytes = atomic_write_bytes


class _Full:
    """A file whose writes fail with ENOSPC once the disk is full."""

    def __init__(self, f, faults: _Faults, name: str) -> None:
        self._f, self._faults, self._name = f, faults, name

    def write(self, data):
        if self._faults.write_call(f"write {self._name}"):
            half = data[: len(data) // 2]
            if half:
                self._f.write(half)
                self._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def flush(self):
        if self._faults.write_call(f"flush {self._name}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.flush()

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.__exit__(*exc)
        return False

    def __iter__(self):
        return iter(self._f)


def _run_dir(argv: list[str]) -> str | None:
    for flag in ("-o", "--out-dir"):
        if flag in argv:
            return argv[argv.index(flag) + 1]
    return None


def run_command(cmd: dict, scratch: str) -> dict:
    if cmd.get("rmtree"):
        shutil.rmtree(cmd["rmtree"], ignore_errors=True)
    if cmd.get("copy"):
        shutil.copytree(*cmd["copy"], symlinks=True)
    out, err, calls = (os.path.join(scratch, n) for n in ("out", "err", "calls"))
    for path in (out, err, calls):
        if os.path.exists(path):
            os.remove(path)
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: a tinylm process
        try:
            os.environ["FAULT_CALLS"] = calls
            for fd, path in ((1, out), (2, err)):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            faults = _Faults(cmd.get("fault"), _run_dir(cmd["argv"]))
            faults.install()
            sys.argv = ["tinylm", *cmd["argv"]]
            try:
                rc = main(cmd["argv"])
            except SystemExit as e:  # SIGTERM after a checkpoint: exit 128 + 15
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
                rc = 1
            sys.stdout.flush()
            sys.stderr.flush()
            faults._dump()
            os._exit(rc)
        except BaseException:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    result = {"name": cmd.get("name", ""), "argv": cmd["argv"],
              "seconds": time.perf_counter() - started,
              "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
              "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
    for key, path in (("out", out), ("err", err)):
        with _real_open(path, encoding="utf-8", errors="replace") as f:
            result[key] = f.read()
    try:
        with _real_open(calls) as f:
            result["calls"] = json.load(f)
    except (OSError, ValueError):
        result["calls"] = None
    run_dir = _run_dir(cmd["argv"])
    result["listing"] = sorted(os.listdir(run_dir)) if run_dir and os.path.isdir(run_dir) else None
    return result


def main_() -> int:
    with _real_open(sys.argv[1]) as f:
        spec = json.load(f)
    scratch = spec.get("scratch") or os.path.dirname(os.path.abspath(sys.argv[1]))
    results = [run_command(cmd, scratch) for cmd in spec["commands"]]
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main_())
