"""``python -m tinylm``: the command line, also as torchrun starts it (``torchrun -m tinylm``)."""

import sys

from tinylm.cli import main

sys.exit(main())
