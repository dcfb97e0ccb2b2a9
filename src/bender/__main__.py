"""``python -m bender``: the ``bender`` command (also what ``torchrun -m bender`` runs)."""

import sys

from bender.cli import main

sys.exit(main())
