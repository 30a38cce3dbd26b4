"""SpatialData export: the image, the cells, their table and the alignment as coordinate transformations.

The store (``OUT.zarr``, read with ``spatialdata.read_zarr``, shown by napari-spatialdata) has two coordinate
systems:

``"global"``
    The cells' own frame, µm (``obsm['spatial']``, x, y).
``"he_pixels"``
    Full-resolution image pixels, x = column, y = row, pixel centres at integers: GALA's
    ``obsm['spatial_he']`` convention.

and these elements:

``he_image``
    The image as loaded (at most 4096 px a side, uint8, channels ``c, y, x``), mapped to ``he_pixels`` by its
    downsampling (``Scale`` + a half-pixel ``Translation``: SpatialData puts pixel centres at +0.5) and to
    ``global`` by that followed by the alignment's affine (image pixels → µm).
``cells``
    Points at the cells' µm positions; ``global``: identity, ``he_pixels``: the alignment's affine (µm →
    image pixels, the affine stage: equal to ``obsm['spatial_he_affine']``; the LDDMM warp is not an affine).
``cells_he``
    Circles at ``obsm['spatial_he']`` (warp included, image pixels; radius half ``spot_diameter_fullres``);
    ``he_pixels``: identity, ``global``: the affine back to µm (so they sit on the image in both systems).
``table``
    The AnnData (``X``, ``obs``, ``var``, ``obsm``, ``uns['gala']``; not the plotting images) annotating
    ``cells_he`` through ``obs['gala_cell_index']`` (and ``obs['gala_region']``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from . import constants
from .io import LoadedImage

__all__ = ["GLOBAL", "IMAGE_PX", "affine_px_to_um_xy", "spatialdata_object", "write_spatialdata"]

GLOBAL = "global"  # coordinate system of the cells: µm
IMAGE_PX = "he_pixels"  # coordinate system of the image: full-resolution pixels (obsm['spatial_he'])
IMAGE_KEY, POINTS_KEY, SHAPES_KEY, TABLE_KEY = "he_image", "cells", "cells_he", "table"
INSTANCE_KEY, REGION_KEY = "gala_cell_index", "gala_region"  # prefixed: never a user's obs column
_WRITE_LOCK = threading.Lock()  # write_spatialdata: one store at a time per process (see there)


def affine_px_to_um_xy(A: np.ndarray) -> np.ndarray:
    """GALA's affine (3×3, image px (row, col) → µm (row, col)) as a 3×3 on (x, y): image px → µm."""
    A = np.asarray(A, dtype=np.float64)
    P = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (row, col, 1) ↔ (x, y, 1)
    return P @ A @ P


def spatialdata_object(adata: Any, image: LoadedImage, A: np.ndarray) -> Any:
    """The :class:`spatialdata.SpatialData` of an aligned AnnData (see the module docstring).

    ``adata``: with ``obsm['spatial']`` (µm), ``obsm['spatial_he']`` and ``obsm['spatial_he_affine']`` (full-
    resolution px); ``image``: the image aligned to, as loaded; ``A``: the result's affine (image px → µm,
    row/col).
    """
    import pandas as pd
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, PointsModel, ShapesModel, TableModel
    from spatialdata.transformations import Affine, Identity, Scale, Sequence, Translation

    from .exports import spot_diameter_px

    px_to_um = affine_px_to_um_xy(A)
    um_to_px = np.linalg.inv(px_to_um)
    to_um = Affine(px_to_um, input_axes=("x", "y"), output_axes=("x", "y"))
    to_px = Affine(um_to_px, input_axes=("x", "y"), output_axes=("x", "y"))

    k = float(image.scale)  # full-res px per loaded px; SpatialData's pixel centres are at +0.5
    raster_to_px = Sequence([Scale([k, k], axes=("y", "x")), Translation([-0.5, -0.5], axes=("y", "x"))])
    pixels = (np.clip(image.pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(2, 0, 1)
    channels = ["grey"] if pixels.shape[0] == 1 else ["r", "g", "b"]
    img = Image2DModel.parse(pixels, dims=("c", "y", "x"), c_coords=channels, chunks=(len(channels), 1024, 1024),
                             transformations={IMAGE_PX: raster_to_px, GLOBAL: Sequence([raster_to_px, to_um])})

    um = np.asarray(adata.obsm[constants.SPATIAL_KEY], dtype=np.float64)[:, :2]
    he = np.asarray(adata.obsm[constants.ALIGNED_KEY], dtype=np.float64)[:, :2]
    index = np.arange(adata.n_obs, dtype=np.int64)
    ids = np.asarray(adata.obs_names, dtype=str)
    points = PointsModel.parse(pd.DataFrame({"x": um[:, 0], "y": um[:, 1], INSTANCE_KEY: index, "cell_id": ids}),
                               transformations={GLOBAL: Identity(), IMAGE_PX: to_px})
    radius = np.full(adata.n_obs, 0.5 * spot_diameter_px(um, A))
    shapes = ShapesModel.parse(he, geometry=0, radius=radius, index=pd.Index(index, name=INSTANCE_KEY),
                               transformations={IMAGE_PX: Identity(), GLOBAL: to_um})

    table = adata.copy()
    table.uns = {k: v for k, v in table.uns.items() if k != "spatial"}  # the plotting images: not needed here
    table.obs = table.obs.copy()
    table.obs[INSTANCE_KEY] = index
    table.obs[REGION_KEY] = pd.Categorical([SHAPES_KEY] * adata.n_obs)
    table = TableModel.parse(table, region=SHAPES_KEY, region_key=REGION_KEY, instance_key=INSTANCE_KEY)
    return SpatialData(images={IMAGE_KEY: img}, points={POINTS_KEY: points}, shapes={SHAPES_KEY: shapes},
                       tables={TABLE_KEY: table})


def write_spatialdata(adata: Any, image: LoadedImage, result: Any, path: str | os.PathLike[str], *,
                      overwrite: bool = False) -> Path:
    """Write :func:`spatialdata_object` of an aligned AnnData to ``path`` (a ``.zarr`` folder) atomically: into
    a temporary folder beside it, then renamed (:func:`gala_engine.outputs.write_dir_atomic`); ``result`` is
    the :class:`~gala_engine.section.AlignmentResult` (its affine ``A``)."""
    import dask

    from .outputs import write_dir_atomic

    sdata = spatialdata_object(adata, image, result.A)
    # The points are a dask DataFrame; inside a batch's Dask worker its parquet write ran as a graph on the batch's
    # cluster (the worker's client), where the second section of a worker failed (KeyError '__null_dask_index__';
    # tests/cli/test_batch_exports.py). So this process writes it itself, on the synchronous scheduler; dask's
    # config is process-wide, hence one write at a time.
    with _WRITE_LOCK, dask.config.set(scheduler="synchronous"):
        return write_dir_atomic(lambda tmp: sdata.write(tmp), path, overwrite=overwrite)
