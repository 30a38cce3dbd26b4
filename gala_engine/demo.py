"""The bundled demo datasets: real cells + tissue image + the true µm → pixel map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import constants
from .errors import GalaInputError
from .io import read_cells, spatial_yx

__all__ = ["DEMOS", "DemoSet", "load_demo", "truth_px_xy"]

DEMO_DIR = Path(__file__).resolve().parent / "demo_data"

DEMOS: dict[str, str] = {
    "merfish_mini": "Vizgen MERFISH mouse brain crop: 504 cells × 559 genes on a DAPI image (4603×4143 px, 9.2 px/µm).",
    "visium_tiny": "10x Visium test fixture: 100 spots × 100 genes on a 600×600 low-res H&E (fiducial frame visible); "
    "a hard case: the sparse spots carry only the tissue outline and the default search misses it.",
    "visium_dg": "10x Visium mouse dentate gyrus: 624 spots × 634 genes on a 243×172 H&E "
    "(~14 µm/px, approximate truth).",
}

# name → (h5ad, image, key path of the 2×3 µm → px matrix inside uns['ground_truth'])
_FILES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "merfish_mini": (
        "merfish_mini/vizgen_mini_cells_z1.h5ad",
        "merfish_mini/mini_dataset_dapi_z1.jpg",
        ("um_to_dapi_px_affine_2x3",),
    ),
    "visium_tiny": (
        "visium_tiny/squidpy_visium_tiny.h5ad",
        "visium_tiny/tissue_lowres_image.png",
        ("um_to_lowres_px_affine_2x3",),
    ),
    "visium_dg": (
        "visium_dg/giotto_mini_visium.h5ad",
        "visium_dg/deg_image2.png",
        ("deg_image2", "um_to_image_px_affine_2x3"),
    ),
}


@dataclass
class DemoSet:
    """One demo dataset.

    Attributes
    ----------
    name
        Key in :data:`DEMOS`.
    adata
        The cells; ``obsm['spatial']`` is (x, y) in µm. A fresh copy on every :func:`load_demo`.
    image_path
        The tissue image file.
    um_to_px
        Ground truth, a ``(2, 3)`` float64 affine: ``[px_x, px_y] = um_to_px @ [um_x, um_y, 1]``
        with px_x the column and px_y the row of the full-resolution image (origin: top-left pixel).
    description
        One line for the UI.
    """

    name: str
    adata: Any
    image_path: Path
    um_to_px: np.ndarray
    description: str


def load_demo(name: str = "merfish_mini") -> DemoSet:
    """Load a bundled demo set (cells, image path and the true µm → pixel affine).

    Raises
    ------
    GalaInputError
        Unknown name (the message lists the demos).
    """
    if name not in _FILES:
        raise GalaInputError(f"unknown demo {name!r}; choose one of {sorted(DEMOS)}.")
    h5ad, image, keys = _FILES[name]
    adata = read_cells(DEMO_DIR / h5ad)
    node: Any = adata.uns[constants.GROUND_TRUTH_KEY]
    for key in keys:
        node = node[key]
    matrix = np.asarray(node, dtype=np.float64)
    if matrix.shape != (2, 3):
        raise GalaInputError(f"demo {name!r}: ground truth has shape {matrix.shape}, not (2, 3).")
    return DemoSet(name, adata, DEMO_DIR / image, matrix, DEMOS[name])


def truth_px_xy(demo: DemoSet) -> np.ndarray:
    """True full-resolution image position of each cell, float64 ``(N, 2)`` as (x, y) = (col, row)."""
    xy = spatial_yx(demo.adata)[:, ::-1]
    return xy @ demo.um_to_px[:, :2].T + demo.um_to_px[:, 2]
