"""Pure numbers about models and runs: metrics, thresholds, bootstrap intervals, statistical tests."""
