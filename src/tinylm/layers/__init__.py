"""One layer vocabulary, four implementations that compute the same numbers.

* ``numpy_layers``: numpy float32 layers with hand-written backward passes;
* ``torch_layers``: the same layers on raw PyTorch tensors (autograd, no nn.Module);
* ``torch_modules``: the idiomatic PyTorch version (nn.Embedding, nn.Linear...);
* ``micrograd_layers``: on tinylm's scalar autograd engine, for tiny sizes.

Every module exposes ``Embedding``, ``Flatten``, ``Linear``, ``Tanh``,
``Sequential``, a cross-entropy loss and ``LM``, the language-model
container that ``tinylm.models.build_model`` fills; ``base`` holds what the
containers share. Import a backend module directly: this package imports
nothing, so numpy users never load PyTorch.
"""
