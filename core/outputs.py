"""The one rule for every command that writes: never onto an input, and never over a file the project did not write.

1. **Outputs stay apart from inputs** (`check_apart`). After resolving `~`, `..` and symbolic links, an output is
   never one of the command's inputs, never lies inside an input folder, and never contains an input (replacing the
   output would take the input with it). This holds with or without `--overwrite`; the refusal names both paths.
2. **The project marks what it writes.**
   - A folder a command made holds a marker file, `.tfsdiff-output` (`mark_folder`, `is_project_folder`).
   - A file a command wrote is listed, with its SHA-256, in a ledger in its folder, `.tfsdiff-written.json`
     (`record_files`, `is_project_file`). A file edited since no longer matches, so it counts as the user's.
   - `--overwrite` replaces only marked folders and recorded files. Anything else is refused, never deleted
     (`check_folder_target`, `check_file_target`).
3. **Outputs of several files are published together or not at all** (`publish_files`): every destination is
   checked, every file is written to a temporary name beside it, and only then are they renamed into place.

Every refusal is an `OutputError` (exit status 2) naming the path and saying what to do.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from core.cli import UsageError, naming_path
from core.hashing import sha256_file

FOLDER_MARKER = ".tfsdiff-output"
FILE_LEDGER = ".tfsdiff-written.json"


class OutputError(UsageError):
    """An output path that must not be written: an input, inside one, or something the project did not write."""


def resolved(path: str | Path) -> Path:
    """`path` made absolute, with `~`, `..` and symbolic links resolved (it need not exist)."""
    return Path(os.path.expanduser(str(path))).resolve(strict=False)


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_apart(output: str | Path, inputs: Iterable[str | Path | None], flag: str = "--out") -> None:
    """OutputError when `output` is an input, lies inside an input folder, or contains an input."""
    out = resolved(output)
    for given in inputs:
        if given is None:
            continue
        source = resolved(given)
        if out == source:
            raise OutputError(f"{flag} {output} is the input {given}: choose another {flag}, never an input")
        if source.is_dir() and _inside(out, source):
            raise OutputError(f"{flag} {output} lies inside the input folder {given}: choose a {flag} outside it")
        if _inside(source, out):
            raise OutputError(f"{flag} {output} contains the input {given}; writing it could replace that input: "
                              f"choose another {flag}")


def mark_folder(folder: Path, command: str) -> None:
    """Mark `folder` as made by the project (`command` is recorded in the marker)."""
    (folder / FOLDER_MARKER).write_text(json.dumps({"written_by": command}) + "\n", encoding="utf-8")


def is_project_folder(folder: Path) -> bool:
    """Whether `folder` is a folder that a command of the project made (it holds the marker file)."""
    return folder.is_dir() and not folder.is_symlink() and (folder / FOLDER_MARKER).is_file()


def _ledger(folder: Path) -> dict[str, str]:
    try:
        entries = json.loads((folder / FILE_LEDGER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, str)} if isinstance(entries, dict) else {}


def record_files(paths: Iterable[Path]) -> None:
    """List each written file, with its SHA-256, in the ledger of its folder."""
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        by_folder.setdefault(path.parent, []).append(path)
    for folder, files in by_folder.items():
        entries = _ledger(folder) | {p.name: sha256_file(p) for p in files}
        ledger = folder / FILE_LEDGER
        tmp = folder / f".{FILE_LEDGER}.tmp{os.getpid()}"
        try:
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, ledger)
        except OSError as err:
            raise naming_path(err, ledger) from err
        finally:
            tmp.unlink(missing_ok=True)


def is_project_file(path: Path) -> bool:
    """Whether `path` is a file the project wrote and nobody changed since (its ledger entry matches)."""
    if not path.is_file() or path.is_symlink():
        return False
    expected = _ledger(path.parent).get(path.name)
    return expected is not None and expected == sha256_file(path)


def check_folder_target(folder: Path, overwrite: bool, flag: str = "--out") -> None:
    """OutputError unless `folder` may become a results folder: absent, empty, or (with `overwrite`) a folder the
    project made."""
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise OutputError(f"{flag} {folder} is a file, not a folder of results: choose another {flag}")
    if not any(folder.iterdir()):
        return
    if not is_project_folder(folder):
        raise OutputError(f"{folder} already exists and was not written by TFS-Diff (it has no {FOLDER_MARKER} "
                          f"marker): it is never replaced; choose another {flag} or remove it yourself")
    if not overwrite:
        raise OutputError(f"{folder} already holds results: pass --overwrite to replace it, or choose another {flag}")


def check_file_target(path: Path, overwrite: bool, flag: str = "--out") -> None:
    """OutputError unless `path` may be written: absent, or (with `overwrite`) a file the project wrote."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{flag} {path} is a folder: give a file name")
    if not is_project_file(path):
        raise OutputError(f"{path} already exists and was not written by TFS-Diff (or was changed since): it is "
                          f"never replaced; choose another {flag} or remove it yourself")
    if not overwrite:
        raise OutputError(f"{path} already exists: pass --overwrite to replace it, or choose another {flag}")


def publish_files(contents: Mapping[Path, str | bytes], overwrite: bool, flag: str = "--out") -> None:
    """Write every file of `contents` or none: check all destinations, write temporaries, then rename them into
    place and record them in their folders' ledgers."""
    for path in contents:
        check_file_target(path, overwrite, flag)
    staged: dict[Path, Path] = {}
    try:
        for path, data in contents.items():
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            staged[path] = tmp
            try:
                tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
            except OSError as err:
                raise naming_path(err, path) from err
        for path, tmp in staged.items():
            os.replace(tmp, path)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    record_files(contents)


def publish_folder(staging: Path, final: Path, command: str) -> None:
    """Mark the complete folder `staging` and move it to `final`, replacing a folder there (which the caller has
    checked with `check_folder_target`); the old folder is removed last."""
    mark_folder(staging, command)
    old = final.with_name(f".{final.name}.old{os.getpid()}")
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)
