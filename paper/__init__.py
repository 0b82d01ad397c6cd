"""The paper's experiments and the real-scan evaluation: `python -m paper.experiments`, `python -m paper.real_scans`."""
