"""The error model of docs/errors.md: every input error derives from `core.errors.UsageError`, and
`core.cli.run_command` maps any subclass of it to exit 2 with its message, without a per-command list."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from core.cli import EXIT_USAGE, UsageError, run_command
from core.errors import UsageError as BaseUsageError

ROOT = Path(__file__).resolve().parent.parent
MODULES = [".".join(p.relative_to(ROOT).with_suffix("").parts)
           for pkg in ("core", "metrics", "data", "model", "bench", "paper") for p in sorted((ROOT / pkg).rglob("*.py"))
           if p.name != "__init__.py" or p.parent != ROOT / pkg] + ["sr", "infer", "eval"]
# Exception classes of the project that are not input errors: a failure while running (exit 1).
NOT_INPUT_ERRORS = {"model.model.NonFiniteLossError"}


def _exception_classes() -> dict[str, type[BaseException]]:
    """qualified name -> class, for every exception class defined at the top level of a project module."""
    found: dict[str, type[BaseException]] = {}
    for name in MODULES:
        path = ROOT / (name.replace(".", "/") + ".py")
        if not path.is_file():
            path = ROOT / name.replace(".", "/") / "__init__.py"
        defined = [node.name for node in ast.parse(path.read_text(encoding="utf-8")).body
                   if isinstance(node, ast.ClassDef)]
        if not defined:
            continue
        module = importlib.import_module(name.removesuffix(".__init__"))
        for cls_name in defined:
            cls = getattr(module, cls_name)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found[f"{module.__name__}.{cls_name}"] = cls
    return found


CLASSES = _exception_classes()


def test_the_walk_finds_the_known_error_classes() -> None:
    for name in ("core.typed_json.ConfigError", "model.checkpoint_io.CheckpointError", "data.images.ImageReadError",
                 "data.fusion_dataset.DatasetError", "data.builders.splits.PrepareError", "infer.InputError",
                 "core.outputs.OutputError", "model.model.NonFiniteLossError"):
        assert name in CLASSES, sorted(CLASSES)


@pytest.mark.parametrize("name", sorted(set(CLASSES) - NOT_INPUT_ERRORS))
def test_every_input_error_is_a_usage_error(name: str) -> None:
    assert issubclass(CLASSES[name], BaseUsageError), f"{name} must derive from core.errors.UsageError (exit 2)"


def test_usage_error_is_one_class_and_keeps_the_other_bases() -> None:
    assert UsageError is BaseUsageError and issubclass(UsageError, ValueError)
    assert issubclass(CLASSES["model.checkpoint_io.CheckpointError"], RuntimeError)
    assert not issubclass(CLASSES["model.model.NonFiniteLossError"], BaseUsageError)


@pytest.mark.parametrize("name", sorted(set(CLASSES) - NOT_INPUT_ERRORS))
def test_run_command_maps_every_input_error_to_exit_2(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    cls = CLASSES[name]
    err = cls.__new__(cls)
    BaseException.__init__(err, "/a/b: bad input")

    def action() -> int:
        raise err

    assert run_command(action) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == "error: /a/b: bad input"


def test_run_command_maps_a_new_subclass_to_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    class SomeNewError(UsageError):
        pass

    def action() -> int:
        raise SomeNewError("--thing: bad")

    assert run_command(action) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == "error: --thing: bad"
