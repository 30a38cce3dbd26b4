"""Outputs other tools read: the scanpy/squidpy image layout in the aligned AnnData, and a plain CSV.

scanpy's ``sc.pl.spatial`` and squidpy's ``spatial_scatter`` draw cells on an image kept in
``uns['spatial'][library_id]`` (Space Ranger's layout): ``images['hires']`` / ``images['lowres']``
(downsampled copies of the full-resolution image) and ``scalefactors`` (``tissue_hires_scalef``,
``tissue_lowres_scalef``: image pixels per full-resolution pixel; ``spot_diameter_fullres``: the dot size,
in full-resolution pixels). The cells' positions are ``obsm['spatial_he']``, (x, y) in full-resolution
image pixels, so::

    sc.pl.spatial(adata, basis="spatial_he", img_key="hires", library_id="gala_he")
    sq.pl.spatial_scatter(adata, spatial_key="spatial_he", img_res_key="hires", library_id="gala_he")

draw the aligned cells on the H&E with no extra code (squidpy reads the image from ``uns[spatial_key]``, so
the library is also in ``uns['spatial_he']``). GALA's library is ``"gala_he"`` (:data:`LIBRARY_ID`): an
input (e.g. Visium) that already has ``uns['spatial']`` for its own image keeps it untouched — then pass
``library_id="gala_he"`` to choose GALA's image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import constants
from .errors import GalaInputError
from .io import LoadedImage

__all__ = [
    "CONFIDENCE_KEY",
    "CSV_COLUMNS",
    "HIRES_MAX_SIDE",
    "LIBRARY_ID",
    "LOWRES_MAX_SIDE",
    "add_spatial_image",
    "cells_csv_text",
    "downsample",
    "spot_diameter_px",
    "write_aligned_h5ad",
    "write_cells_csv",
]

LIBRARY_ID = "gala_he"  # uns['spatial'] key of the image GALA aligned to
HIRES_MAX_SIDE = 2000  # longest side of images['hires'] (Space Ranger's hires is 2000 px too)
LOWRES_MAX_SIDE = 600  # longest side of images['lowres'] (as Space Ranger's)
CONFIDENCE_KEY = constants.CONFIDENCE_KEY  # obs column of the per-cell confidence (gala_engine.qc)
CSV_COLUMNS = ("cell_id", "x_um", "y_um", "x_px", "y_px")  # + "confidence" when obs has CONFIDENCE_KEY


def downsample(image: LoadedImage, max_side: int) -> tuple[np.ndarray, float]:
    """The image as uint8 RGB ``(h, w, 3)`` with its longest side at most ``max_side``, and its scale factor.

    The factor ``s`` is image pixels per full-resolution pixel (never finer than the loaded pixels): a
    full-resolution position ``(x, y)`` is at ``(x·s, y·s)`` in the result — scanpy's convention. Grey images
    (DAPI) are repeated into three channels so every plotting tool shows them in grey.
    """
    import cv2

    full_h, full_w = (int(v) for v in image.full_shape)
    s = min(max_side / max(full_h, full_w), 1.0 / float(image.scale))
    f = s * float(image.scale)  # result pixels per loaded pixel
    pixels = np.ascontiguousarray(image.pixels, dtype=np.float32)
    out_w, out_h = max(1, round(full_w * s)), max(1, round(full_h * s))
    if f < 1.0 - 1e-12:  # f ≤ 1: never finer than loaded. resize with fx maps pixel edges u ↦ u·f exactly
        pixels = cv2.resize(pixels, (0, 0), fx=f, fy=f, interpolation=cv2.INTER_AREA)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
    pixels = pixels[:out_h, :out_w]
    if pixels.shape[0] < out_h or pixels.shape[1] < out_w:  # a rounding pixel short: repeat the edge
        pixels = np.pad(pixels, ((0, out_h - pixels.shape[0]), (0, out_w - pixels.shape[1]), (0, 0)), mode="edge")
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return (np.clip(pixels[:, :, :3], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), float(s)


def spot_diameter_px(xy_um: np.ndarray, A: np.ndarray) -> float:
    """Dot diameter for plots, in full-resolution pixels: the cells' median nearest-neighbour distance (µm)
    converted with the affine ``A`` (image px → µm); 10 px for a single cell."""
    from .raster import cell_spacing

    spacing_um = cell_spacing(np.asarray(xy_um, dtype=np.float64))
    um_per_px = math.sqrt(abs(float(np.linalg.det(np.asarray(A, dtype=np.float64)[:2, :2]))))
    if not spacing_um > 0 or not um_per_px > 0 or not math.isfinite(spacing_um / um_per_px):
        return 10.0
    return float(spacing_um / um_per_px)


def add_spatial_image(adata: Any, image: LoadedImage, A: np.ndarray, *, library_id: str = LIBRARY_ID) -> list[str]:
    """Put the image and its scale factors in ``adata.uns['spatial'][library_id]`` (in place), and the same in
    ``adata.uns['spatial_he'][library_id]``: scanpy reads the former, squidpy ``uns[spatial_key]`` (so
    ``spatial_key='spatial_he'`` needs the latter; :func:`write_aligned_h5ad` stores the images once).

    Parameters
    ----------
    adata
        The aligned AnnData: ``obsm['spatial_he']`` (x, y full-resolution image pixels) and ``obsm['spatial']``
        (x, y µm) are used.
    image
        The image the cells were aligned to, as loaded (:func:`gala_engine.io.read_image`).
    A
        The result's affine, image pixels (row, col) → µm (row, col): sets ``spot_diameter_fullres``.
    library_id
        The key under ``uns['spatial']`` / ``uns['spatial_he']``. Other libraries there (an input's own Visium
        image) are kept.

    Returns
    -------
    list of str
        Warnings (an input ``uns['spatial']`` or ``uns['spatial_he']`` that is not a mapping is left as it is,
        and no image is added).
    """
    if constants.ALIGNED_KEY not in adata.obsm:
        raise GalaInputError(f"the AnnData has no obsm['{constants.ALIGNED_KEY}']; align it first.")
    keys = ("spatial", constants.ALIGNED_KEY)  # scanpy reads uns['spatial'], squidpy uns[spatial_key]
    warnings = [f"uns['{key}'] of the cells file is not a mapping ({type(adata.uns[key]).__name__}); it was kept "
                "as it is" for key in keys if key in adata.uns and not hasattr(adata.uns[key], "keys")]
    if warnings:
        return [w + " and the image was not added for scanpy/squidpy." for w in warnings]
    hires, s_hi = downsample(image, HIRES_MAX_SIDE)
    lowres, s_lo = downsample(image, LOWRES_MAX_SIDE)
    xy_um = np.asarray(adata.obsm[constants.SPATIAL_KEY], dtype=np.float64)[:, :2]
    library = {
        "images": {"hires": hires, "lowres": lowres},
        "scalefactors": {
            "tissue_hires_scalef": s_hi,
            "tissue_lowres_scalef": s_lo,
            "spot_diameter_fullres": spot_diameter_px(xy_um, A),
        },
        "metadata": {"source_image": str(Path(str(image.source)).name),
                     "full_resolution_shape": np.asarray(image.full_shape, dtype=np.int64),
                     "coordinates": f"obsm['{constants.ALIGNED_KEY}'] (x, y) in full-resolution image pixels"},
    }
    for key in keys:
        libraries = dict(adata.uns[key]) if key in adata.uns else {}
        libraries[library_id] = library
        adata.uns[key] = libraries
    return []


def _shared_images(adata: Any) -> list[tuple[str, str]]:
    """``(library, image)`` whose array in ``uns['spatial_he']`` is the very object in ``uns['spatial']`` (as
    :func:`add_spatial_image` puts them)."""
    spatial, he = adata.uns.get("spatial"), adata.uns.get(constants.ALIGNED_KEY)
    if not (hasattr(spatial, "keys") and hasattr(he, "keys")):
        return []
    out = []
    for lib, entry in he.items():
        other = spatial.get(lib)
        if hasattr(entry, "get") and hasattr(other, "get") and hasattr(entry.get("images"), "items"):
            out += [(str(lib), str(name)) for name, img in entry["images"].items()
                    if hasattr(other.get("images"), "get") and other["images"].get(name) is img]
    return out


def write_aligned_h5ad(adata: Any, path: str | os.PathLike[str], *,
                       protect: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """:func:`gala_engine.io.write_h5ad_atomic`, with each image that ``uns['spatial']`` and ``uns['spatial_he']``
    share stored once: the second name is an HDF5 hard link to the first (anndata, scanpy and squidpy read
    both as usual; the file is not twice the images' size)."""
    from .io import write_h5ad_atomic

    shared = _shared_images(adata)
    if not shared:
        return write_h5ad_atomic(adata, path, protect=protect)
    he = adata.uns[constants.ALIGNED_KEY]
    saved = {lib: he[lib] for lib in {lib for lib, _ in shared}}

    def link(tmp: Path) -> None:
        import h5py

        with h5py.File(tmp, "r+") as f:
            for lib, name in shared:
                group = f[f"uns/{constants.ALIGNED_KEY}/{lib}/images"]
                group[name] = f[f"uns/spatial/{lib}/images/{name}"]  # a hard link: the same dataset

    try:
        for lib, entry in saved.items():  # written without the shared images; linked before the rename
            he[lib] = {**entry, "images": {k: v for k, v in entry["images"].items() if (lib, k) not in shared}}
        return write_h5ad_atomic(adata, path, protect=protect, before_rename=link)
    finally:
        for lib, entry in saved.items():
            he[lib] = entry


def _cells_frame(adata: Any):
    """The CSV's rows as a pandas DataFrame (see :func:`cells_csv_text`)."""
    import pandas as pd

    if constants.ALIGNED_KEY not in adata.obsm:
        raise GalaInputError(f"the AnnData has no obsm['{constants.ALIGNED_KEY}']; align it first.")
    um = np.asarray(adata.obsm[constants.SPATIAL_KEY], dtype=np.float64)[:, :2]
    px = np.asarray(adata.obsm[constants.ALIGNED_KEY], dtype=np.float64)[:, :2]
    frame = pd.DataFrame({"cell_id": np.asarray(adata.obs_names, dtype=str), "x_um": um[:, 0], "y_um": um[:, 1],
                          "x_px": px[:, 0], "y_px": px[:, 1]})
    if CONFIDENCE_KEY in adata.obs:
        conf = pd.to_numeric(adata.obs[CONFIDENCE_KEY], errors="coerce").to_numpy(dtype=np.float64)
        if np.isfinite(conf).all():
            frame["confidence"] = conf
    return frame


def cells_csv_text(adata: Any) -> str:
    """The aligned cells as CSV text: ``cell_id, x_um, y_um, x_px, y_px[, confidence]``.

    ``x_um, y_um`` are ``obsm['spatial']`` (µm), ``x_px, y_px`` ``obsm['spatial_he']`` (full-resolution image
    pixels, column and row, row 0 at the top). ``confidence`` (0–1) is ``obs['gala_confidence']``; the column
    is written only when that exists and is finite for every cell (no empty cells in the file).
    """
    return _cells_frame(adata).to_csv(index=False, float_format="%.6f", lineterminator="\n")


def write_cells_csv(adata: Any, path: str | os.PathLike[str], *, protect: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Write :func:`cells_csv_text` to ``path`` atomically (a temporary file, then a rename); never over an
    input in ``protect``."""
    from .outputs import write_text_atomic

    return write_text_atomic(cells_csv_text(adata), path, protect=protect)
