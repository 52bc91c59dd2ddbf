"""The layer vocabulary as idiomatic PyTorch: ``torch.nn`` modules.

Here the layers are PyTorch's own (``nn.Embedding``, ``nn.Flatten``,
``nn.Linear``, ``nn.Tanh``, ``nn.Sequential``) and the loss is
``F.cross_entropy``; this is how the model would be written in everyday
PyTorch code. They share the constructor signatures of the numpy and
raw-tensor layers, so one builder in ``tinylm.models`` makes all three.
The language model holds an ``nn.Sequential`` as ``net``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import nn

from tinylm.layers.torch_layers import TorchLM

__all__ = ["Embedding", "Flatten", "Linear", "Tanh", "Sequential", "cross_entropy", "LM"]

Embedding = nn.Embedding
Flatten = nn.Flatten   # start_dim=1: (B, T, C) -> (B, T*C)
Linear = nn.Linear
Tanh = nn.Tanh
Sequential = nn.Sequential
cross_entropy = F.cross_entropy


class TorchModuleLM(TorchLM):
    """The raw-tensor language model's interface over an ``nn.Sequential`` of modules.

    The modules' own random initialisation is overwritten by the builder's
    weights; forward hooks, ``net.to(...)`` and everything else of
    ``nn.Module`` work on ``net`` as usual. A forward hook keeps each
    module's last output in ``.out``, as the other backends' layers do.
    """

    backend = "torch-module"
    loss_fn = staticmethod(F.cross_entropy)

    @staticmethod
    def make_net(layers: Sequence[Any]) -> nn.Sequential:
        net = nn.Sequential(*layers)
        for module in net:
            module.out = None
            module.register_forward_hook(_keep_output)
        return net


def _keep_output(module: nn.Module, inputs: Any, output: Any) -> None:
    module.out = output


LM = TorchModuleLM  # the name models.build_model looks for in every backend module
