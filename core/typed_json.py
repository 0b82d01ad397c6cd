"""Typed JSON-with-comments configs: read a file, build frozen dataclasses from it, and turn them back into dicts.

Generic machinery for `core.config` (the TFS-Diff schema). A dataclass is built from a dict key by key: unknown
keys (with a "did you mean" hint), missing required keys and mistyped values fail with a :class:`ConfigError`
naming the source file and the full key path; lists become tuples and integral floats ints. Two optional hooks
on a schema class: `check_given_keys(keys)` rejects keys that were given but mean nothing in context, and
`plain_keys()` lists the fields `to_plain` writes. A file may name a base config to override (`"base"`,
:func:`parse_json_file`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from core.errors import UsageError

# Field metadata key: (value SR3 configs write, value it stands for), e.g. gpu_ids null -> ().
SR3_ALIAS = "sr3_alias"
BASE_KEY = "base"  # a config's top-level key naming the config it overrides (parse_json_file)
T = TypeVar("T")
_COMMENT_OR_STRING = re.compile(r'("(?:\\.|[^"\\])*")|//[^\n]*')


class ConfigError(UsageError):
    """A config value is missing, malformed or inconsistent; the message names the file and the key path."""

    def __init__(self, key: str, reason: str, source: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.source = source
        super().__init__(": ".join(part for part in (source, key, reason) if part))

    def located(self, prefix: str, source: str) -> ConfigError:
        """Return this error with ``prefix`` prepended to its key path and ``source`` attached."""
        return ConfigError(join_key(prefix, self.key), self.reason, source)


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def strip_json_comments(text: str) -> str:
    """Remove ``// ...`` comments (to end of line) outside JSON strings; line and column numbers are kept."""
    return _COMMENT_OR_STRING.sub(lambda match: match.group(1) or "", text)


def read_json_with_comments(path: str | os.PathLike) -> Any:
    """The JSON value in the file at ``path``, ``//`` comments allowed; ConfigError naming the file otherwise."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is skipped
    except FileNotFoundError:
        raise ConfigError("", "file not found", source) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("", f"cannot read file: {err}", source) from None
    try:
        return json.loads(strip_json_comments(text))
    except json.JSONDecodeError as err:
        raise ConfigError("", f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}", source) from None


# ------------------------------------------------------------------------------------------- base configs


def read_json_with_base(path: str | os.PathLike) -> Any:
    """The JSON value in the file at ``path`` with its chain of base configs merged in (:func:`parse_json_file`)."""
    return _read_chain(Path(path), os.fspath(path), ())[0]


def parse_json_file(path: str | os.PathLike, parse: Callable[[Any, str], T],
                    prepare: Callable[[Any, Callable[[str], str]], Any] | None = None) -> T:
    """``parse(data, source)`` of the config file at ``path``, after merging in its chain of base configs.

    A config whose top-level object has a ``"base"`` key (a file name, relative to the config's folder) is the base
    config (itself possibly with a base: chains are allowed) with the config's other keys on top: objects merge key
    by key, recursively; lists, scalars and null replace; an object whose ``"type"`` differs from the base's
    object's replaces it whole (its other keys were options of the base's type). A cycle of bases or a missing
    base is a ConfigError naming the config that names it. An error in the merged data names the file that wrote
    the offending key ("<base> (a base of <config>)" for a key that comes from a base), else ``path``.

    ``prepare(data, origin_of)``, when given, turns the merged data into what is parsed; ``origin_of(key_path)``
    names the file that wrote that key (the name of a file of the chain, usable from the current directory; ``path``
    for a key no file wrote), e.g. to resolve a relative path against the folder of the file that wrote it.
    """
    source = os.fspath(path)
    data, origins = _read_chain(Path(path), source, ())
    if prepare is not None:
        data = prepare(data, lambda key: _origin(origins, key, source))
    try:
        return parse(data, source)
    except ConfigError as err:
        origin = _origin(origins, err.key, source)
        if origin == source or err.source != source:
            raise
        raise ConfigError(err.key, err.reason, f"{origin} (a base of {source})") from None


def _origin(origins: dict[str, str], key: str, source: str) -> str:
    """The file that wrote key path ``key``: that of its nearest listed prefix, else the top-level ``source``."""
    while key and key not in origins:
        key = key[:key.rindex("[")] if key.endswith("]") and "[" in key else key.rpartition(".")[0]
    return origins.get(key, source)


def _read_chain(path: Path, source: str, seen: tuple[tuple[Path, str], ...]) -> tuple[Any, dict[str, str]]:
    """The merged data of the config ``source`` at ``path`` and, for the key paths a file wrote, that file's name (a
    key path's nearest listed prefix names the file of a key path not listed); ``seen``: (resolved path, name) of
    the configs based on it."""
    data = read_json_with_comments(path)
    if not isinstance(data, dict) or BASE_KEY not in data:
        return data, dict.fromkeys(data, source) if isinstance(data, dict) else {}
    base = data[BASE_KEY]
    if not isinstance(base, str) or not base:
        raise ConfigError(BASE_KEY, "expected the file name of the base config (relative to this config's folder), "
                          f"got {_show(base)}", source)
    base_path, base_source = path.parent / base, os.path.normpath(os.path.join(os.path.dirname(source), base))
    chain = (*seen, (path.resolve(), source))
    resolved = [real for real, _ in chain]
    if base_path.resolve() in resolved:
        names = [name for _, name in chain[resolved.index(base_path.resolve()):]]
        raise ConfigError(BASE_KEY, f"the base configs form a cycle: {' -> '.join([*names, base_source])}", source)
    if not base_path.is_file():
        raise ConfigError(BASE_KEY, f"base config {base_source} not found", source)
    merged, origins = _read_chain(base_path, base_source, chain)
    if not isinstance(merged, dict):
        raise ConfigError(BASE_KEY, f"base config {base_source} is not a JSON object", source)
    return _merge(merged, {k: v for k, v in data.items() if k != BASE_KEY}, "", source, origins), origins


def _merge(base: dict, over: dict, prefix: str, source: str, origins: dict[str, str]) -> dict:
    """``over`` merged onto ``base`` (new dicts); records in ``origins`` that ``source`` wrote what it replaced."""
    out = dict(base)
    for key, value in over.items():
        path = join_key(prefix, str(key))
        old = base.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and value.get("type", old.get("type")) == old.get("type"):
            out[key] = _merge(old, value, path, source, origins)
            continue
        for stale in [k for k in origins if k.startswith((f"{path}.", f"{path}["))]:
            del origins[stale]
        out[key], origins[path] = value, source
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_dataclass(cls: type, data: Any, path: str, source: str) -> Any:
    """Build dataclass ``cls`` from dict ``data`` found at key path ``path``."""
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected an object, got {_show(data)}", source)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(fields)}"
            raise ConfigError(join_key(path, str(key)), f"unknown key ({hint})", source)
    hints = get_type_hints(cls, include_extras=True)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = join_key(path, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, "missing required key", source)
            continue
        value = data[name]
        alias = f.metadata.get(SR3_ALIAS)
        if alias is not None and type(value) is type(alias[0]) and value == alias[0]:
            value = alias[1]
        kwargs[name] = _coerce(value, hints[name], key, source)
    try:
        result = cls(**kwargs)
        if hasattr(result, "check_given_keys"):
            result.check_given_keys(tuple(data))
    except ConfigError as err:
        raise err.located(path, source) from None
    return result


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert it (lists -> tuples, integral floats -> int)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _coerce(value, inner, key, source)
    if origin is Annotated:  # Annotated[str, names]: one of `names.names()`, asked now (core.registry.Names)
        args = tuple(extra.names() for extra in args[1:] if hasattr(extra, "names"))[0]
        origin = Literal
    if origin is Literal:
        if any(type(value) is type(arg) and value == arg for arg in args):
            return value
        raise ConfigError(key, f"expected one of {', '.join(map(repr, args))}, got {_show(value)}", source)
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {_show(value)}", source)
        return tuple(_coerce(item, args[0], f"{key}[{i}]", source) for i, item in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, key, source)
    return _coerce_scalar(value, tp, key, source)


def _coerce_scalar(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check a bool/int/float/str; bools are never numbers, ints pass as floats, integral floats as ints."""
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(key, f"expected a finite number, got {value}", source)
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    names = {bool: "true or false", str: "a string", float: "a number", int: "an integer"}
    if tp not in names:
        raise TypeError(f"{key}: unsupported annotation {tp!r} in the config schema")
    raise ConfigError(key, f"expected {names[tp]}, got {_show(value)}", source)


def to_plain(value: Any) -> Any:
    """A dataclass tree as plain JSON-able dicts and lists (the fields `plain_keys()` names, where defined)."""
    if dataclasses.is_dataclass(value):
        out = {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if hasattr(value, "plain_keys"):
            keep = value.plain_keys()
            out = {k: v for k, v in out.items() if k in keep}
        return out
    if isinstance(value, tuple):
        return [to_plain(item) for item in value]
    return value
