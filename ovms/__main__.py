"""`python -m ovms`: the same as the `ovms` command."""

import sys

from ovms.cli import main

sys.exit(main())
