"""One layer vocabulary, four implementations that compute the same numbers.

* ``numpy_layers``: numpy float32 layers with hand-written backward passes;
* ``torch_layers``: the same layers on raw PyTorch tensors (autograd, no nn.Module);
* ``torch_modules``: the idiomatic PyTorch version (nn.Embedding, nn.Linear...);
* ``micrograd_layers``: on tinylm's scalar autograd engine, for tiny sizes.

A backend module supplies the primitive layers; ``composite`` wires the
layers made of other layers (the Transformer block, the Transformer, the
recurrent language model) once, from whichever backend's primitives;
``base`` holds what the layers and the language-model containers share.
Every backend exposes the names of ``VOCABULARY`` (micrograd those of
``FIXED_WINDOW_VOCABULARY``), and a test says so. Import a backend module
directly: this package imports nothing, so numpy users never load PyTorch.
"""

# the backends, by the name --backend gives them
BACKENDS = ("numpy", "torch", "torch-module", "micrograd")
TORCH_BACKENDS = ("torch", "torch-module")  # the two that PyTorch computes

# what the fixed-window models (bigram, mlp, bnmlp, wavenet) are built from, and their container
FIXED_WINDOW_VOCABULARY = ("Embedding", "Flatten", "Linear", "Tanh", "Sequential",
                           "cross_entropy", "LM")
# ... and with these, the sequence models (transformer, rnn, gru)
VOCABULARY = FIXED_WINDOW_VOCABULARY + (
    "BatchNorm1d", "FlattenConsecutive", "LayerNorm", "GELU", "Dropout", "CausalSelfAttention",
    "Block", "RNN", "GRU", "Transformer", "RecurrentLM", "positions", "sequence_cross_entropy",
    "SequenceLM")
