"""The exceptions tinylm raises for problems a user can fix.

Library code raises these with a message that names the thing at fault
(a file, a flag, a checkpoint) and what is wrong with it; the CLI prints
the message as one line on stderr and exits non-zero. Anything else that
escapes is a bug in tinylm.
"""


class TinylmError(Exception):
    """Base class: a problem with the user's input, not a bug."""


class DataError(TinylmError):
    """An input text file that cannot be used (missing, not UTF-8, too small...)."""


class ConfigError(TinylmError):
    """An option or combination of options that makes no sense."""


class CheckpointError(TinylmError):
    """A run directory or checkpoint that is missing, truncated or tampered with."""
