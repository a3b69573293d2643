"""`python -m thaw ...` is `thaw ...`."""

from thaw.cli import main

raise SystemExit(main())
