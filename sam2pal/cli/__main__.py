"""`python -m sam2pal.cli …` (also how torchrun starts each process of a multi-process fine-tune)."""

import sys

from sam2pal.cli import main

sys.exit(main())
