"""A scalar-valued autograd engine and a tiny neural-network library on top of it.

The first rung of tinylm's ladder: the code to read to understand
backpropagation. ``engine`` holds ``Value`` and the backward pass, ``nn``
the layers, the MLP, cross-entropy, SGD and AdamW, ``datasets`` the 2D toy
problems, ``graph`` the pictures of a computation graph and ``demo`` the
reference recipe behind ``tinylm micrograd``. Pure Python: no numpy in the engine.
"""

from tinylm.micrograd.engine import Value, weighted_sum
from tinylm.micrograd.nn import MLP, SGD, AdamW, Linear, Module, Tanh, cross_entropy

__all__ = ["Value", "weighted_sum", "Module", "Linear", "Tanh", "MLP", "cross_entropy", "SGD", "AdamW"]
