"""Experiment folders and logging: `runs/<name>_<timestamp>/{logs,tb_logger,results,checkpoint}` (and
the files a command records there, e.g. sr.py's resolved `config.json`)."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

LOGGER_NAME = "tfsdiff"


@dataclass(frozen=True)
class RunDirs:
    """The folders of one run."""

    root: Path
    logs: Path
    tb_logger: Path
    results: Path
    checkpoint: Path


def make_run_dirs(experiments_root: str | Path, name: str, phase: str,
                  checkpoint_files: Mapping[str, str] | None = None,
                  root_files: Mapping[str, str] | None = None) -> RunDirs:
    """Create a fresh `<experiments_root>/<name>_<phase>_<yymmdd_HHMMSS>` run folder with its subfolders.

    The folder appears at once, complete: it is built under a hidden temporary name, with `checkpoint_files`
    (name -> text, e.g. the checkpoint a resumed run starts from) already in `checkpoint/` and `root_files` (e.g.
    the resolved config, `config.json`) in the folder itself, and then renamed.
    """
    stamp = datetime.now().strftime("%y%m%d_%H%M%S")
    root = Path(experiments_root) / f"{name}_{phase}_{stamp}"
    suffix = 1
    while root.exists():
        root = Path(experiments_root) / f"{name}_{phase}_{stamp}_{suffix}"
        suffix += 1
    root.parent.mkdir(parents=True, exist_ok=True)
    building = root.with_name(f".{root.name}.tmp{os.getpid()}")
    try:
        for folder in ("logs", "tb_logger", "results", "checkpoint"):
            (building / folder).mkdir(parents=True)
        for file_name, text in (checkpoint_files or {}).items():
            (building / "checkpoint" / file_name).write_text(text, encoding="utf-8")
        for file_name, text in (root_files or {}).items():
            (building / file_name).write_text(text, encoding="utf-8")
        os.rename(building, root)
    finally:
        if building.exists():
            shutil.rmtree(building)
    return RunDirs(root, root / "logs", root / "tb_logger", root / "results", root / "checkpoint")


def setup_logger(log_file: Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """The project logger, writing to stderr and, when given, to `log_file`; handlers are replaced, not stacked."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger
