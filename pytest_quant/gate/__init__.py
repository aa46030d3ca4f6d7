"""Gates: per-item scores against thresholds, sequential paired tests, verdicts and rows, baselines, power."""
