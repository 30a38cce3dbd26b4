"""SpatialData export: read back with spatialdata.read_zarr, the cells land on their image pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gala_engine import constants
from gala_engine.errors import GalaInputError
from gala_engine.outputs import check_store_output
from gala_engine.sdata import GLOBAL, IMAGE_PX, write_spatialdata

from .test_exports import _section


@pytest.fixture(scope="module")
def warped(tmp_path_factory):
    """A synthetic section whose result has a real (non-zero) LDDMM warp, loaded at 1/3 resolution."""
    from gala_engine.section import aligned_adata

    folder = tmp_path_factory.mktemp("sdata")
    adata, image, _ = _section(folder, shape=(1500, 1800), max_side=600)
    from gala_engine.manual import affine_result

    A = np.asarray(adata.uns[constants.UNS_KEY]["A"], dtype=np.float64)
    result = affine_result(A, image_shape=image.full_shape)
    rng = np.random.default_rng(1)
    result.v = rng.normal(0.0, 8.0, result.v.shape)  # a smooth 4×4-grid flow of a few pixels
    adata = aligned_adata(adata, result)
    shift = np.linalg.norm(adata.obsm[constants.ALIGNED_KEY] - adata.obsm[constants.ALIGNED_AFFINE_KEY], axis=1)
    assert shift.max() > 1.0  # the warp moves the cells: the affine alone cannot give spatial_he
    out = write_spatialdata(adata, image, result, folder / "out.zarr")
    return adata, image, result, out


def test_round_trip_positions(warped) -> None:
    import spatialdata as sd

    adata, image, result, out = warped
    sdata = sd.read_zarr(out)
    assert set(sdata.coordinate_systems) == {GLOBAL, IMAGE_PX}
    # cells_he (circles): the warped positions, in image pixels
    he = sd.transform(sdata["cells_he"], to_coordinate_system=IMAGE_PX)
    np.testing.assert_allclose(np.c_[he.geometry.x, he.geometry.y], adata.obsm[constants.ALIGNED_KEY], atol=0.01)
    # cells (points, µm): identity to global, the alignment's affine to image pixels
    pts = sd.transform(sdata["cells"], to_coordinate_system=IMAGE_PX).compute().sort_values("gala_cell_index")
    np.testing.assert_allclose(pts[["x", "y"]].to_numpy(), adata.obsm[constants.ALIGNED_AFFINE_KEY], atol=0.01)
    glob = sd.transform(sdata["cells"], to_coordinate_system=GLOBAL).compute().sort_values("gala_cell_index")
    np.testing.assert_allclose(glob[["x", "y"]].to_numpy(), adata.obsm[constants.SPATIAL_KEY], atol=1e-9)
    # the table annotates the circles, cell for cell
    table = sdata["table"]
    assert table.uns["spatialdata_attrs"]["region"] == "cells_he"
    np.testing.assert_array_equal(table.obs["gala_cell_index"].to_numpy(), np.asarray(he.index))
    np.testing.assert_array_equal(table.obs_names, adata.obs_names)
    assert "spatial" not in table.uns and constants.UNS_KEY in table.uns


def test_image_under_the_cells(warped) -> None:
    """The image's own transformation puts each cell's dark disc under it (the stored image is 1/3 size)."""
    import spatialdata as sd
    from spatialdata.transformations import get_transformation

    adata, image, result, out = warped
    sdata = sd.read_zarr(out)
    img = sdata["he_image"]
    assert img.shape == (3, *image.pixels.shape[:2])
    to_px = get_transformation(img, to_coordinate_system=IMAGE_PX).to_affine_matrix(("x", "y"), ("x", "y"))
    he = adata.obsm[constants.ALIGNED_AFFINE_KEY]  # the discs were drawn at the affine positions
    intrinsic = np.c_[he, np.ones(len(he))] @ np.linalg.inv(to_px).T
    cols, rows = np.floor(intrinsic[:, 0]).astype(int), np.floor(intrinsic[:, 1]).astype(int)  # pixel i: [i, i+1)
    pixels = np.asarray(img.values)
    on_cells = pixels[:, rows, cols].mean()
    assert on_cells < 130 and pixels[:, 2, 2].min() == 255  # dark discs under the cells, white background
    wrong = np.c_[he * 1.05, np.ones(len(he))] @ np.linalg.inv(to_px).T  # 5 % off: mostly background
    r, c = np.clip(wrong[:, 1].astype(int), 0, pixels.shape[1] - 1), np.clip(wrong[:, 0].astype(int), 0,
                                                                            pixels.shape[2] - 1)
    assert pixels[:, r, c].mean() > on_cells + 60
    # global (µm): the image goes through the same affine as the cells
    to_um = get_transformation(img, to_coordinate_system=GLOBAL).to_affine_matrix(("x", "y"), ("x", "y"))
    mapped = np.c_[intrinsic[:, :2], np.ones(len(he))] @ to_um.T
    np.testing.assert_allclose(mapped[:, :2], adata.obsm[constants.SPATIAL_KEY], atol=1e-6)


def test_store_is_written_atomically_and_never_over_other_folders(warped, tmp_path: Path) -> None:
    adata, image, result, out = warped
    assert not list(out.parent.glob(".*.tmp"))
    with pytest.raises(GalaInputError, match="already exists"):
        write_spatialdata(adata, image, result, out)
    before = {p.name for p in out.iterdir()}
    write_spatialdata(adata, image, result, out, overwrite=True)  # a zarr store is replaced
    assert {p.name for p in out.iterdir()} == before and not list(out.parent.glob(".*.tmp"))
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(GalaInputError, match="not a zarr store"):
        write_spatialdata(adata, image, result, folder, overwrite=True)
    assert (folder / "keep.txt").read_text() == "mine"
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "cells.h5ad").write_bytes(b"x")
    with pytest.raises(GalaInputError, match="holds\\) the input"):
        check_store_output("--zarr", inputs, [inputs / "cells.h5ad"], overwrite=True)

    def boom(path: Path) -> None:
        path.mkdir()
        (path / "zarr.json").write_text("{}")
        raise OSError("disk full")

    from gala_engine.outputs import write_dir_atomic

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomic(boom, out, overwrite=True)
    assert {p.name for p in out.iterdir()} == before  # the previous store is back, no half-written one
    assert not list(out.parent.glob(".*.tmp"))
