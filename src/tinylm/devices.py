"""Where the PyTorch backends compute, and in which precision.

``--device`` names a PyTorch device: ``auto`` (CUDA when present, else the
CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. The numpy and scalar-engine
backends compute on the CPU only and refuse any other. Checkpoints do not
depend on the device: a model's ``state_dict()`` is numpy arrays in every
backend, so a run trained on a GPU resumes, samples and evaluates on a CPU.

``--dtype`` is the precision of the forward pass. ``float32`` (the default)
computes as written and keeps every backend's numbers equal. ``bfloat16``
and ``float16`` run the forward pass under ``torch.autocast``: matrix
multiplies in the lower precision, the weights, their gradients and the
optimizer's moments still float32, the loss in float32 (the models cast
their logits before the softmax). float16's narrow range would flush small
gradients to zero, so its loss is scaled up before the backward pass and
the gradients down again before the update (``torch.amp.GradScaler``, whose
scale is part of the checkpoint); bfloat16 has float32's range and needs no
scaling. Lower precision is for GPUs: on a CPU bfloat16 is mostly slower
than float32, and the choice is there so that a run can be tried anywhere.

``--compile`` hands a torch model's network to ``torch.compile``, which
traces it once and generates fused kernels (C++ on the CPU, through a C++
compiler that must be on the PATH; Triton on a GPU). The first steps wait
for the compiler; the numbers agree with the uncompiled ones to rounding,
not to the bit, since fused kernels add in another order.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from typing import Any, ContextManager

from tinylm import pytorch
from tinylm.errors import ConfigError
from tinylm.layers import TORCH_BACKENDS

DTYPES = ("float32", "bfloat16", "float16")
DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def is_device_name(text: Any) -> bool:
    """Whether ``text`` is one of the device forms (a device that may not be present)."""
    return isinstance(text, str) and _DEVICE.fullmatch(text) is not None


def resolve(requested: str, backend: str) -> str:
    """The device a run of ``backend`` computes on, checked to be present.

    ``ConfigError`` (one line) for a device this machine does not have, or a
    GPU asked of a backend that computes with numpy.
    """
    if not is_device_name(requested):
        raise ConfigError(f"unknown device {requested!r}; choose {DEVICE_FORMS}")
    if backend not in TORCH_BACKENDS:
        if requested in ("auto", "cpu"):
            return "cpu"
        raise ConfigError(f"--device {requested} needs a torch backend: the {backend} backend "
                          "computes on the CPU (use --backend torch or torch-module)")
    torch = pytorch.load()

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("--device mps: this machine has no Apple GPU that PyTorch can use "
                              "(use --device cpu)")
        return "mps"
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: this machine has no CUDA GPU that PyTorch can "
                          f"use (PyTorch {torch.__version__}; use --device cpu or auto)")
    index = int(requested.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"--device {requested}: this machine has {count} CUDA GPU"
                          f"{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})")
    return requested


def check_dtype(dtype: str, backend: str, device: str) -> None:
    """``ConfigError`` for a lower precision on a backend or device that cannot run it."""
    if dtype == "float32":
        return
    if backend not in TORCH_BACKENDS:
        raise ConfigError(f"--dtype {dtype} needs a torch backend (torch.autocast): the "
                          f"{backend} backend computes in float32")
    if device == "mps" and dtype == "bfloat16":
        raise ConfigError("--dtype bfloat16 is not available on mps; use float16 or float32")


def torch_dtype(name: str) -> Any:
    torch = pytorch.load()

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def device_type(device: str) -> str:
    """"cuda" for "cuda:1": what ``torch.autocast`` and ``GradScaler`` take."""
    return device.partition(":")[0]


def autocast(device: str, dtype: str) -> ContextManager[Any]:
    """The context of a forward pass in ``dtype`` (float32: as written, nothing changed).

    A plain function returning a context, not a generator: every forward pass enters it,
    and a sampled token's forward pass is a few hundred microseconds."""
    if dtype == "float32":
        return contextlib.nullcontext()
    torch = pytorch.load()

    return torch.autocast(device_type(device), dtype=torch_dtype(dtype))


def grad_scaler(device: str, dtype: str) -> Any:
    """``torch.amp.GradScaler`` for float16, None for the precisions that need no scaling."""
    if dtype != "float16":
        return None
    torch = pytorch.load()

    return torch.amp.GradScaler(device_type(device))


# the C++ compilers torch.compile's inductor looks for on the CPU (its CXX setting first)
CXX_COMPILERS = ("c++", "g++", "clang++")


def check_compile(backend: str, device: str) -> None:
    """``ConfigError`` where ``--compile`` cannot run: a backend that is not PyTorch, or a
    CPU run with no C++ compiler to build the generated kernels."""
    if backend not in TORCH_BACKENDS:
        raise ConfigError(f"--compile needs a torch backend (torch.compile); the {backend} "
                          "backend has nothing to compile")
    if device_type(device) == "cpu" and not any(shutil.which(c) for c in CXX_COMPILERS):
        raise ConfigError("--compile needs a C++ compiler on the PATH to build its CPU kernels "
                          f"({', '.join(CXX_COMPILERS)}: none found); install one (Debian: "
                          "apt-get install g++) or train without --compile")
