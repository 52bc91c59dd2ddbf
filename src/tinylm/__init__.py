"""tinylm: a from-scratch character-level language-modeling toolkit.

Give it a text file with one item per line and it learns to generate more
items like them, through a ladder of models from n-gram counts to deep
networks. See README.md for a tour and docs/architecture.md for the layout.
"""

__version__ = "0.1.0"
