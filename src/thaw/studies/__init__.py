"""Many runs: the one study runner (``runner``) and what uses it: compare, curve, folds, probe, ``auto``
and the demo."""
