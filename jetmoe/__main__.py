"""`python -m jetmoe`: the `jetmoe` command."""

import sys

from jetmoe.cli import main

sys.exit(main())
