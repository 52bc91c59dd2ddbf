"""tinylm: a from-scratch character-level language-modeling toolkit.

Give it a text file, a list of items or one document, and it learns to
generate more like it, through a ladder of models from n-gram counts to deep
networks. From Python::

    import tinylm
    run = tinylm.train(model="mlp", steps=1000, out_dir="runs/mlp")
    run.sample(n=5)
    tinylm.load("runs/mlp").evaluate()

See README.md for a tour, docs/api.md for the Python API and
docs/architecture.md for the layout.
"""

__version__ = "0.1.0"

from tinylm.api import Run, Sample, load, train  # noqa: E402  (after the version: cli reads it)

__all__ = ["Run", "Sample", "load", "train", "__version__"]
