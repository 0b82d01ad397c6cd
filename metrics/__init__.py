"""Image metrics, their registry and scoring, the evaluator's tables and comparison figure (docs/metrics.md)."""
