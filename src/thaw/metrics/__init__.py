"""Pure numbers from probabilities and labels: metrics, thresholds, bootstrap intervals, statistics."""
