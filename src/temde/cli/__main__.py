"""`python -m temde.cli` (torchrun -m temde.cli ...) is the same as `temde`."""
import sys

from temde.cli import main

sys.exit(main())
