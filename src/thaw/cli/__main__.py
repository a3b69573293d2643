"""`python -m thaw.cli ...` is `thaw ...`."""

from thaw.cli import main

raise SystemExit(main())
