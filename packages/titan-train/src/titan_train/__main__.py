"""`python -m titan_train` (what torchrun launches): the same as the titan-train command."""

import sys

from titan_train.cli import main

sys.exit(main())
