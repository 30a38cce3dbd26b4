"""Read an untrusted GALA transform ``.npz`` (what :meth:`AlignmentResult.save_npz` writes) safely.

Before anything is decompressed, the zip's directory is checked: only the expected members, each
declaring an uncompressed size within :data:`MAX_MEMBER_BYTES` (and all within :data:`MAX_TOTAL_BYTES`),
no member compressed more than :data:`MAX_RATIO` times. Each array's ``.npy`` header is read first: no
object dtype (pickles), a shape that matches the declared size and the expected layout. The JSON header
is bounded in length and nesting depth, parsed without recursion limits being reachable, and checked
against a schema (types of every field).
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from typing import Any

import numpy as np

from .errors import GalaInputError

__all__ = ["MAX_MEMBER_BYTES", "MAX_RATIO", "MAX_TOTAL_BYTES", "read_transform_npz"]

MAX_MEMBER_BYTES = 512 * 2**20  # a velocity field of 3 × 2000 × 2000 × 2 float64 is 192 MB
MAX_TOTAL_BYTES = 768 * 2**20
MAX_RATIO = 500  # uncompressed / compressed, for members over 16 MB: float data compress a few times, zeros ~1000×
_MAX_HEADER_CHARS = 16 * 2**20
_MAX_DEPTH = 16
_ARRAYS = {"A": 2, "A_affine": 2, "v": 4, "xv_rows": 1, "xv_cols": 1, "genes": 1}
# header field → accepted Python types (after json.loads)
_SCHEMA: dict[str, tuple[type, ...]] = {
    "fitness": (int, float),
    "score": (int, float),
    "params": (dict,),
    "ga_history": (list,),
    "energy_history": (list,),
    "device": (str,),
    "runtime_s": (int, float),
    "stopped": (bool,),
    "dx": (int, float),
    "version": (str,),
    "origin": (dict,),
    "diagnostics": (dict,),
}
_REQUIRED = ("fitness", "score", "params")


def _bad(path: Any, why: str) -> GalaInputError:
    return GalaInputError(
        f"{os.fspath(path) if isinstance(path, str | os.PathLike) else '<bytes>'} is not a GALA transform "
        f".npz ({why}); use a file written by save_npz / the app's 'Download transform .npz'."
    )


def read_transform_npz(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the validated JSON header of a transform ``.npz``.

    Raises
    ------
    GalaInputError
        Not a zip / npz, unexpected or oversized members (a zip bomb), pickled objects, arrays of the
        wrong shape, or a header that is too large, too deeply nested or of the wrong types.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise _bad(path, f"{type(exc).__name__}: {exc}") from None
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        want = {f"{k}.npy" for k in (*_ARRAYS, "header")}
        missing = sorted(want - set(infos))
        extra = sorted(set(infos) - want)
        if missing or extra:
            raise _bad(path, f"members missing {missing}" if missing else f"unexpected members {extra[:5]}")
        total = 0
        for info in infos.values():
            if info.file_size > MAX_MEMBER_BYTES:
                raise _bad(path, f"{info.filename} declares {info.file_size:,} bytes, more than a transform holds")
            if info.file_size > 16 * 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise _bad(path, f"{info.filename} is compressed {info.file_size / max(info.compress_size, 1):,.0f}×, "
                                 "a zip bomb")
            total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise _bad(path, f"{total:,} bytes uncompressed in all")
        arrays = {name: _read_member(zf, infos[f"{name}.npy"], path) for name in (*_ARRAYS, "header")}
    header = _parse_header(arrays.pop("header"), path)
    _check_arrays(arrays, path)
    return arrays, header


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Any) -> np.ndarray:
    from numpy.lib import format as npy

    try:
        with zf.open(info) as fh:
            version = npy.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = npy.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = npy.read_array_header_2_0(fh)
            else:
                raise ValueError(f"npy format version {version}")
            if dtype.hasobject:
                raise _bad(path, f"{info.filename} holds pickled Python objects, which are never loaded")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size:
                raise _bad(path, f"{info.filename} declares {shape} {dtype} but holds fewer bytes")
            data = fh.read(nbytes + 1)  # bounded by the declared, checked size
            if len(data) != nbytes:
                raise _bad(path, f"{info.filename} has {len(data)} bytes of data for {nbytes}")
            arr = np.frombuffer(data, dtype=dtype)
            return arr.reshape(shape, order="F" if fortran else "C")
    except GalaInputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
        raise _bad(path, f"{info.filename}: {type(exc).__name__}: {exc}") from None


def _parse_header(arr: np.ndarray, path: Any) -> dict[str, Any]:
    if arr.ndim != 0 or arr.dtype.kind != "U":
        raise _bad(path, "the header is not one JSON string")
    text = str(arr)
    if len(text) > _MAX_HEADER_CHARS:
        raise _bad(path, f"the header is {len(text):,} characters long")
    depth = level = 0
    in_str = escape = False
    for ch in text:  # nesting depth without recursion (json.loads recurses once per level)
        if in_str:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            level += 1
            depth = max(depth, level)
            if depth > _MAX_DEPTH:
                raise _bad(path, f"the header is nested more than {_MAX_DEPTH} levels deep")
        elif ch in "]}":
            level -= 1
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _bad(path, f"the header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _bad(path, "the header is not a JSON object")
    unknown = sorted(set(header) - set(_SCHEMA))
    if unknown:
        raise _bad(path, f"unknown header fields {unknown[:5]}")
    missing = [k for k in _REQUIRED if k not in header]
    if missing:
        raise _bad(path, f"header fields missing {missing}")
    for key, value in header.items():
        types = _SCHEMA[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise _bad(path, f"header field {key!r} is {type(value).__name__} {str(value)[:40]!r}, expected "
                             f"{' or '.join(t.__name__ for t in types)}")
        if isinstance(value, float) and not math.isfinite(value) and key != "fitness":
            raise _bad(path, f"header field {key!r} is {value}")
    for key in ("fitness", "score", "runtime_s", "dx"):
        if key in header:
            header[key] = float(header[key])
    if not all(isinstance(h, dict) for h in header.get("ga_history", [])):
        raise _bad(path, "header field 'ga_history' must be a list of objects")
    energy = header.get("energy_history", [])
    if not all(isinstance(row, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in row)
               for row in energy):
        raise _bad(path, "header field 'energy_history' must be a list of lists of numbers")
    from .params import AlignParams

    try:
        AlignParams.from_dict(header["params"])
    except (GalaInputError, TypeError) as exc:
        raise _bad(path, f"its parameters are invalid: {exc}") from None
    return header


def _check_arrays(arrays: dict[str, np.ndarray], path: Any) -> None:
    for name, ndim in _ARRAYS.items():
        arr = arrays[name]
        if arr.ndim != ndim or arr.dtype.kind not in "fiu":
            raise _bad(path, f"{name} has shape {arr.shape} and type {arr.dtype}, expected {ndim}-D numbers")
        if not np.isfinite(arr).all():
            raise _bad(path, f"{name} holds NaN or inf")
    for name in ("A", "A_affine"):
        if arrays[name].shape != (3, 3):
            raise _bad(path, f"{name} has shape {arrays[name].shape}, expected (3, 3)")
    if arrays["genes"].shape != (5,):
        raise _bad(path, f"genes has shape {arrays['genes'].shape}, expected (5,)")
    v = arrays["v"]
    if v.shape[1:] != (arrays["xv_rows"].size, arrays["xv_cols"].size, 2):
        raise _bad(path, f"v has shape {v.shape}, which does not match its grid "
                         f"({arrays['xv_rows'].size} × {arrays['xv_cols'].size})")
