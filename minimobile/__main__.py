"""`python -m minimobile ...` runs the command line, as the `minimobile` script does."""

from .cli import main

raise SystemExit(main())
