"""Replay: what an aligned ``.h5ad`` records to be re-run, and re-running it.

:func:`run_record` is stored as ``uns['gala']['replay']`` by every aligned ``.h5ad`` the CLI, the batch and
the API write: the inputs' names, sizes and sha256 checksums, the image's size and how it was read
(``max_side``, channel, series, plane), the signal, feature and raster pixel ``dx`` asked for and used,
landmarks / starting transform files, the parameters as asked (``uns['gala']['params']`` holds them as the
run resolved them), the seed, and the package versions; the device is ``uns['gala']['device']``.

:func:`replay` checks the given files against the checksums (a clear error when they differ), runs the
alignment again with the recorded settings, and compares the new ``obsm['spatial_he']`` with the recorded
one: on the same CPU the runs are deterministic (the GA is seeded), so they must agree to < 1e-4 px.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import constants
from .errors import GalaInputError
from .events import ProgressCallback

__all__ = ["MATCH_TOLERANCE_PX", "REPLAY_KEY", "file_record", "package_versions", "replay", "run_record", "sha256_of"]

REPLAY_KEY = "replay"  # uns['gala'][REPLAY_KEY]
MATCH_TOLERANCE_PX = 1e-4  # a replay on the same CPU must reproduce obsm['spatial_he'] to this (full-res px)
SCHEMA = 1
_PACKAGES = ("torch", "numpy", "scipy", "pygad", "anndata", "h5py", "opencv-python-headless", "scikit-image",
             "tifffile", "pillow", "pandas")
_NONE = ""  # h5ad cannot store None: written as "", read back as None


def sha256_of(source: str | os.PathLike[str] | bytes) -> str:
    """Hex sha256 of a file (read in 1 MiB blocks) or of bytes."""
    h = hashlib.sha256()
    if isinstance(source, bytes | bytearray | memoryview):
        h.update(source)
        return h.hexdigest()
    with open(source, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(source: str | os.PathLike[str] | bytes, name: str | None = None) -> dict[str, Any]:
    """``{"name", "bytes", "sha256"}`` of an input file (a path, or an upload's bytes and its ``name``)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return {"name": name or "<bytes>", "bytes": len(source), "sha256": sha256_of(source)}
    path = Path(source)
    return {"name": name or path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def package_versions() -> dict[str, str]:
    """Versions of GALA, Python and the packages the numbers depend on (``""`` when one is missing)."""
    from . import __version__

    out = {"gala": __version__, "python": platform.python_version(), "platform": platform.platform(),
           "machine": platform.machine()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = _NONE
    return out


def _opt(value: Any) -> Any:
    return _NONE if value is None else value


def run_record(
    *,
    image: dict[str, Any],
    cells: dict[str, Any],
    image_full_shape: tuple[int, int],
    image_loaded_shape: tuple[int, ...],
    image_scale: float,
    max_side: int | None,
    channel: int | None,
    series: int | None,
    plane: int | None,
    signal: str,
    signal_used: str,
    feature: str,
    feature_used: str,
    dx: float | None,
    dx_used: float,
    seed: int,
    n_cells: int,
    params: dict[str, Any],
    landmarks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``uns['gala']['replay']`` holds (h5ad-safe: no None; ``""`` stands for "not given").

    ``params``: the :class:`~gala_engine.params.AlignParams` as asked (``uns['gala']['params']`` holds them as
    the run resolved them, e.g. ``fitness="auto"`` became ``"tissue"``; a replay must ask the same).
    ``image`` / ``cells``: :func:`file_record` of the inputs. ``signal`` / ``feature`` / ``dx``: as asked (the
    replay asks the same); ``*_used``: what the run used (e.g. cell density when every count was zero, the
    feature ``auto`` chose, the ``dx`` chosen from the data). ``landmarks``: ``{"landmarks": file_record,
    "mode", "fit", "init_transform": file_record, "pixel_size"}`` when given.
    """
    rec: dict[str, Any] = {
        "schema": SCHEMA,
        "image": {**image, "full_shape": np.asarray(image_full_shape, dtype=np.int64),
                  "loaded_shape": np.asarray(image_loaded_shape[:2], dtype=np.int64), "scale": float(image_scale),
                  "max_side": _opt(max_side), "channel": _opt(channel), "series": _opt(series), "plane": _opt(plane)},
        "cells": {**cells, "n_cells": int(n_cells)},
        "signal": signal, "signal_used": signal_used, "feature": feature, "feature_used": feature_used,
        "dx": _opt(dx), "dx_used": float(dx_used), "seed": int(seed),
        "params": {k: _opt(v) for k, v in params.items()},
        "versions": package_versions(),
    }
    if landmarks:
        rec["landmarks"] = {k: ({kk: _opt(vv) for kk, vv in v.items()} if isinstance(v, dict) else _opt(v))
                            for k, v in landmarks.items()}
    return rec


def _none(value: Any) -> Any:
    """A recorded value back: ``""`` → None, numpy scalars → Python."""
    if isinstance(value, str) and value == _NONE:
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _int_or_none(value: Any) -> int | None:
    value = _none(value)
    return None if value is None else int(value)


def _check_file(label: str, path: Path, recorded: Any) -> None:
    """``path``'s sha256 equals the recorded one, else a GalaInputError naming both files."""
    if not hasattr(recorded, "get") or not recorded.get("sha256"):
        raise GalaInputError(f"the aligned file records no checksum of its {label}; it cannot be replayed.")
    got = sha256_of(path)
    if got != str(recorded["sha256"]):
        raise GalaInputError(
            f"the {label} {path.name} is not the file this alignment was made from: its sha256 {got[:16]}… differs "
            f"from the recorded {str(recorded['sha256'])[:16]}… (recorded file name: {recorded.get('name', '?')}, "
            f"{int(recorded.get('bytes', 0))} bytes; given: {path.stat().st_size} bytes). Give the original file."
        )


def read_record(aligned: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The aligned AnnData and its ``uns['gala']`` (with a ``'replay'`` record), checked."""
    from .io import read_cells

    adata = read_cells(aligned)
    meta = adata.uns.get(constants.UNS_KEY)
    if not hasattr(meta, "get") or constants.ALIGNED_KEY not in adata.obsm:
        raise GalaInputError(f"{Path(aligned).name} is not an aligned .h5ad written by GALA (no uns['gala'] or no "
                             f"obsm['{constants.ALIGNED_KEY}']).")
    rec = meta.get(REPLAY_KEY)
    if not hasattr(rec, "get") or int(_none(rec.get("schema", 0)) or 0) != SCHEMA:
        raise GalaInputError(f"{Path(aligned).name} has no replay record (uns['gala']['replay']): it was written by "
                             "an older GALA or by the app; align again with this version to get one.")
    return adata, dict(meta)


def _params_from(meta: dict[str, Any], device: str | None):
    """The parameters the recorded run asked for (``device`` replaces the recorded device choice)."""
    from .params import AlignParams

    raw = {k: _none(v) for k, v in dict(meta[REPLAY_KEY]["params"]).items()}
    raw.setdefault("count_scale", "linear")  # recorded before the count scale existed: the counts were used as they are
    raw.setdefault("nuclei_fit", False)  # recorded before the cell-level refinement existed
    if device is not None:
        raw["device"] = device
    return AlignParams.from_dict(raw)


def replay(
    aligned: str | os.PathLike[str],
    image: str | os.PathLike[str],
    h5ad: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    landmarks: str | os.PathLike[str] | None = None,
    init_transform: str | os.PathLike[str] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike[str] | None] = (),
    progress: ProgressCallback | None = None,
    tolerance: float = MATCH_TOLERANCE_PX,
) -> dict[str, Any]:
    """Re-run the alignment recorded in ``aligned`` on ``image`` + ``h5ad``, write it to ``out``, compare.

    The inputs (and ``landmarks`` / ``init_transform`` when the run used them) must be the recorded files
    (sha256); the parameters, seed, signal, feature, ``dx`` and image reading options are the recorded ones;
    ``device`` overrides the recorded device choice (results differ across devices).

    Returns
    -------
    dict
        ``match`` (bool: max |Δ spatial_he| < ``tolerance``), ``max_delta_px`` (full-resolution px),
        ``median_delta_px``, ``device`` / ``recorded_device``, ``output``, ``warnings``, and ``align``: what
        :func:`gala_engine.batch.align_files` returned.

    Raises
    ------
    GalaInputError
        Not an aligned file with a replay record, a file that is not the recorded one, a missing landmarks
        file the run used, or a problem :func:`~gala_engine.batch.align_files` reports.
    """
    from .batch import align_files
    from .io import read_cells

    aligned, image, h5ad, out = Path(aligned), Path(image), Path(h5ad), Path(out)
    old, meta = read_record(aligned)
    rec = meta[REPLAY_KEY]
    _check_file("image", image, rec.get("image"))
    _check_file("cells file", h5ad, rec.get("cells"))
    lm = rec.get("landmarks") or {}
    kw: dict[str, Any] = {}
    for key, given, label in (("landmarks", landmarks, "--landmarks"), ("init_transform", init_transform,
                                                                          "--init-transform")):
        recorded = lm.get(key) if hasattr(lm, "get") else None
        if hasattr(recorded, "get") and recorded.get("sha256"):
            if given is None:
                raise GalaInputError(f"this alignment used the {key.replace('_', ' ')} file {recorded.get('name')}; "
                                     f"give it with {label}.")
            _check_file(key.replace("_", " ") + " file", Path(given), recorded)
            kw[key] = given
        elif given is not None:
            raise GalaInputError(f"this alignment used no {key.replace('_', ' ')} file; drop {label}.")
    if lm:
        kw.update(landmarks_mode=str(lm.get("mode", "init")), landmarks_fit=str(lm.get("fit", "similarity")))
        if _none(lm.get("pixel_size")) is not None:
            kw["pixel_size"] = float(lm["pixel_size"])
    params = _params_from(meta, device)
    img = rec["image"]
    res = align_files(image, h5ad, out, params, signal=str(rec["signal"]), dx=_none(rec.get("dx")),
                      feature=str(rec["feature"]), max_side=_int_or_none(img.get("max_side")),
                      channel=_int_or_none(img.get("channel")), series=_int_or_none(img.get("series")),
                      plane=_int_or_none(img.get("plane")), progress=progress, overwrite=overwrite,
                      protect=[aligned, *protect], xenium_matrix=False, **kw)
    new = read_cells(out)
    a = np.asarray(old.obsm[constants.ALIGNED_KEY], dtype=np.float64)
    b = np.asarray(new.obsm[constants.ALIGNED_KEY], dtype=np.float64)
    if a.shape != b.shape:
        raise GalaInputError(f"the replay has {len(b)} cells, the recorded run {len(a)}; the cells file differs.")
    delta = np.linalg.norm(a - b, axis=1) if len(a) else np.zeros(1)  # Euclidean, per cell
    max_delta = float(np.max(delta))
    warnings = list(res.get("warnings", []))
    recorded_device = str(meta.get("device", ""))
    if recorded_device and recorded_device != res["device"]:
        warnings.append(f"recorded on {recorded_device}, replayed on {res['device']}: small differences are "
                        "expected across devices.")
    versions = rec.get("versions", {})
    now = package_versions()
    changed = [f"{k} {versions[k]} → {now.get(k, '')}" for k in versions
               if k not in ("platform",) and str(versions[k]) != str(now.get(k, ""))]
    if changed:
        warnings.append("versions differ from the recorded run: " + ", ".join(changed))
    return {"match": bool(max_delta < tolerance), "max_delta_px": max_delta, "median_delta_px": float(np.median(delta)),
            "tolerance_px": float(tolerance), "device": res["device"], "recorded_device": recorded_device,
            "output": str(out), "warnings": warnings, "align": res}
