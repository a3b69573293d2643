"""Pure numbers about models and runs: metrics, intervals and tests (numpy and scipy; no torch, no plots)."""
