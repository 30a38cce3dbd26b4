"""An aligned ``.h5ad`` (as :func:`gala_engine.section.write_aligned` writes it) read back as a result, so the
app can show it and continue from it.

Everything in ``uns['gala']`` is checked (shapes, finite values, sizes) before use; a file without the warp
field (older versions) gives the affine alone, and says so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import constants
from .errors import GalaInputError
from .section import AlignmentResult

__all__ = ["aligned_result"]

MAX_V_VALUES = 20_000_000  # a velocity field larger than this is not one GALA wrote


def _matrix(meta: dict, key: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        a = np.asarray(meta[key], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise GalaInputError(f"uns['gala']['{key}'] is missing or not numbers.") from None
    if a.shape != shape or not np.isfinite(a).all():
        raise GalaInputError(f"uns['gala']['{key}'] must be finite numbers of shape {shape}, got {a.shape}.")
    return a


def _scalar(value: Any, default: float) -> float:
    try:
        f = float(np.asarray(value).reshape(()))
    except (TypeError, ValueError):
        return default
    return f if math.isfinite(f) else default


def aligned_result(adata: Any) -> AlignmentResult | None:
    """The alignment stored in ``adata.uns['gala']`` (None when the file holds none).

    ``origin`` says it was opened from a file; without a stored warp (``v``, ``xv_rows``, ``xv_cols``) the
    result is the affine alone and ``origin['note']`` says so.

    Raises
    ------
    GalaInputError
        ``uns['gala']`` is there but malformed (wrong shapes, non-finite values, a singular affine).
    """
    meta = adata.uns.get(constants.UNS_KEY) if hasattr(adata, "uns") else None
    if not isinstance(meta, dict) or "A" not in meta:
        return None
    A = _matrix(meta, "A", (3, 3))
    A_aff = _matrix(meta, "A_affine", (3, 3)) if "A_affine" in meta else A.copy()
    if abs(np.linalg.det(A[:2, :2])) < 1e-300 or abs(np.linalg.det(A_aff[:2, :2])) < 1e-300:
        raise GalaInputError("uns['gala']['A'] is not an invertible affine.")
    genes = np.asarray(meta.get("genes", np.zeros(5)), dtype=np.float64).reshape(-1)
    genes = genes[:5] if genes.size >= 5 and np.isfinite(genes[:5]).all() else np.zeros(5)
    note = "opened from an aligned .h5ad"
    if all(k in meta for k in ("v", "xv_rows", "xv_cols")):
        v = np.asarray(meta["v"])
        if v.size > MAX_V_VALUES or v.ndim != 4 or v.shape[-1] != 2:
            raise GalaInputError(f"uns['gala']['v'] must be a (nt, rows, cols, 2) field, got shape {v.shape}.")
        v = v.astype(np.float64)
        xv = [np.asarray(meta["xv_rows"], np.float64).reshape(-1), np.asarray(meta["xv_cols"], np.float64).reshape(-1)]
        if (xv[0].size, xv[1].size) != v.shape[1:3] or not all(np.isfinite(a).all() for a in (v, *xv)):
            raise GalaInputError("uns['gala']: the warp field 'v' does not fit its grid 'xv_rows' × 'xv_cols'.")
    else:
        v, xv = np.zeros((1, 4, 4, 2)), [np.linspace(0.0, 1.0, 4), np.linspace(0.0, 1.0, 4)]
        obsm = getattr(adata, "obsm", {})
        warped, affine = obsm.get(constants.ALIGNED_KEY), obsm.get(constants.ALIGNED_AFFINE_KEY)
        if warped is not None and affine is not None and np.shape(warped) == np.shape(affine) and not np.allclose(
                np.asarray(warped, np.float64), np.asarray(affine, np.float64), atol=1e-3):
            note += "; the file does not hold the warp (older version): shown without it"
    params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    params = {str(k): (None if (isinstance(p, str) and p == "") else p) for k, p in params.items()
              if isinstance(p, str | int | float | bool | np.generic)}
    params = {k: (p.item() if isinstance(p, np.generic) else p) for k, p in params.items()}
    return AlignmentResult(
        A=A, A_affine=A_aff, v=v, xv=xv, genes=genes, fitness=_scalar(meta.get("fitness"), math.nan),
        score=_scalar(meta.get("score"), 0.0), params=params, device=str(meta.get("device", "–"))[:100],
        runtime_s=_scalar(meta.get("runtime_s"), 0.0), dx=_scalar(meta.get("dx_um"), 0.0),
        version=str(meta.get("version", ""))[:50], origin={"source": "file", "note": note},
    )
