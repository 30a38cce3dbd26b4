"""Read and write :class:`~gala_engine.params.AlignParams` as TOML (the CLI's ``--params`` and the app's export).

The file is flat: one ``name = value`` line per parameter, with the names of :class:`AlignParams`
(the tutorial's names). ``None`` values are omitted (omitted names take their defaults); where the
default is not ``None`` (e.g. ``max_anisotropy``), ``None`` is written as the string ``"none"``, which
reads back as ``None``. Tables named
after the parameter groups (``[ga]``, ``[lddmm]``, ``[general]``) or ``[params]`` are accepted too and
flattened, so a hand-written file may be grouped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import tomllib

from .errors import GalaInputError
from .params import AlignParams

__all__ = ["dumps_params", "loads_params", "read_params", "write_params"]

_TABLES = ("ga", "lddmm", "general", "params")


def loads_params(text: str | bytes, *, source: str = "<text>", base: AlignParams | None = None) -> AlignParams:
    """Parse TOML text into :class:`AlignParams` (names not given keep ``base``'s values or the defaults).

    Raises
    ------
    GalaInputError
        Invalid TOML (with the line), unknown parameter names, or out-of-range values.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise GalaInputError(f"parameter file {source} is not UTF-8 text; save it as a .toml file.") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GalaInputError(f"parameter file {source} is not valid TOML: {exc}.") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in _TABLES:
            flat.update(value)
        else:
            flat[key] = value
    bad = sorted(k for k, v in flat.items() if isinstance(v, dict | list))
    if bad:
        raise GalaInputError(f"parameter file {source}: {bad} must be single values (numbers, text, true/false).")
    values = (base or AlignParams()).to_dict()
    names = set(values)
    unknown = sorted(set(flat) - names)
    if unknown:
        raise GalaInputError(f"parameter file {source}: unknown parameter(s) {unknown}; known: {sorted(names)}.")
    nullable = {f.name for f in dataclasses.fields(AlignParams) if "None" in str(f.type)}
    for key, value in flat.items():
        if key in nullable and isinstance(value, str) and value.strip().lower() == "none":
            flat[key] = None
    values.update(flat)
    try:
        return AlignParams.from_dict(values)
    except GalaInputError as exc:
        raise GalaInputError(f"parameter file {source}: {exc}") from None
    except TypeError as exc:  # pragma: no cover - from_dict checks names first
        raise GalaInputError(f"parameter file {source}: {exc}") from None


def read_params(path: str | os.PathLike[str], *, base: AlignParams | None = None) -> AlignParams:
    """Read a TOML parameter file (see the module docstring for the layout)."""
    from .io import path_problem

    p = Path(path)
    if problem := path_problem(p):
        raise GalaInputError(f"parameter file {problem}")
    return loads_params(p.read_bytes(), source=str(p), base=base)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise GalaInputError(f"cannot write {type(value).__name__} value {value!r} to a TOML parameter file.")


def dumps_params(params: AlignParams, *, comments: bool = True) -> str:
    """TOML text for ``params``: flat ``name = value`` lines, ``None`` omitted, help as comments."""
    lines = ["# GALA alignment parameters (names as in AlignParams / the tutorial); omitted names use defaults."]
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if value is None and f.default is None:
            continue
        if comments:
            lines.append(f"# {f.metadata.get('help', '')}".rstrip())
        lines.append(f"{f.name} = {_toml_value('none' if value is None else value)}")
    return "\n".join(lines) + "\n"


def write_params(params: AlignParams, path: str | os.PathLike[str]) -> Path:
    """Write ``params`` to a TOML file (atomically: a temporary file, then a rename)."""
    dest = Path(path)
    if not dest.parent.is_dir():
        raise GalaInputError(f"folder {dest.parent} does not exist; create it first.")
    from .outputs import temp_prefix

    tmp = dest.with_name(f"{temp_prefix(dest)}params.tmp")
    tmp.write_text(dumps_params(params), encoding="utf-8")
    os.replace(tmp, dest)
    return dest
