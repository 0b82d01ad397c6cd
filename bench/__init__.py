"""Speed benchmark of TFS-Diff: `python -m bench.run` (see docs/speed.md)."""
