"""The project's one base class for input errors.

Every exception that means "the user's input is wrong" (a bad option, config key, image, dataset, checkpoint, output
path, ...) derives from :class:`UsageError`, so `core.cli.run_command` maps all of them to exit status 2 with their
message, without a per-command list. The class lives here, at the bottom of `core/`, so that every layer (and
`core/typed_json.py`, which `core/cli.py` itself imports) can derive from it. A class keeps another base where code
catches it as such (e.g. `model.checkpoint_io.CheckpointError` is also a RuntimeError). The message names the file,
folder, key or option, so it is raised once where the problem is found and propagated as it is, never re-wrapped
into another input error with the same message. docs/errors.md describes the whole error policy.
"""
from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A usage or input error (exit status 2); the message names the path, key or option and says what to do."""
