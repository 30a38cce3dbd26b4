"""Space Ranger AnnData (scanpy.read_visium, squidpy) keep the spots in full-resolution image pixels and the scale
in uns['spatial'][library]['scalefactors']: the check says so, with the factor to µm, and stays quiet once the
positions are µm. (Visium spots: tests/corpus.py's ``cells_space_ranger_*`` cases, every path.)"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from gala_engine.checks import check_cells, space_ranger_pixels
from gala_engine.raster import cell_spacing

UM_PER_PX = 0.2738


def _flag(adata: ad.AnnData) -> str | None:
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    return space_ranger_pixels(adata, xy, cell_spacing(xy))


def _hd_bins(bin_um: float, in_pixels: bool, factors: dict) -> ad.AnnData:
    """Visium HD-like square bins of ``bin_um`` (a 30 × 30 patch with some counts)."""
    grid = np.stack(np.meshgrid(np.arange(30), np.arange(30)), -1).reshape(-1, 2) * bin_um + 1000.0
    adata = ad.AnnData(np.random.default_rng(0).poisson(3.0, (len(grid), 4)).astype(np.float32))
    adata.obsm["spatial"] = grid / UM_PER_PX if in_pixels else grid
    adata.uns["spatial"] = {"square_008um": {"scalefactors": factors}}
    return adata


@pytest.mark.parametrize("bin_um", [2.0, 8.0, 16.0])
def test_visium_hd_bins_in_pixels_are_flagged_with_the_factor(bin_um):
    factors = {"microns_per_pixel": UM_PER_PX, "bin_size_um": bin_um, "tissue_hires_scalef": 0.1}
    in_px = _hd_bins(bin_um, True, factors)
    warning = _flag(in_px)
    assert warning is not None and f"* {UM_PER_PX:g}," in warning
    assert any("Space Ranger" in w for w in check_cells(in_px).warnings)
    in_um = _hd_bins(bin_um, False, factors)
    assert _flag(in_um) is None
    assert not check_cells(in_um).warnings


def test_no_bin_size_means_no_guess():
    """Without ``bin_size_um`` the pitch is unknown: a 2 µm bin in µm would read like 8 µm bins in pixels."""
    adata = _hd_bins(8.0, True, {"microns_per_pixel": UM_PER_PX})
    assert _flag(adata) is None


def _visium_tiny(in_pixels: bool, *, array_columns: bool = True) -> ad.AnnData:
    """The bundled Visium fixture (100 spots thinned from the array: neighbours ~265 µm apart) with Space Ranger's
    scale factors, its positions in µm (as bundled) or in full-resolution pixels."""
    from gala_engine.demo import load_demo

    adata = load_demo("visium_tiny").adata
    if in_pixels:
        adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64) / UM_PER_PX
    if not array_columns:
        adata.obs = adata.obs.drop(columns=["array_row", "array_col"])
    adata.uns["spatial"] = {"V1": {"scalefactors": {"spot_diameter_fullres": 55.0 / UM_PER_PX}}}
    return adata


def test_thinned_visium_spots_are_read_on_their_array_grid():
    """Spots thinned out sit several pitches apart, so their spacing alone can look like pixels; the array's own
    columns (array_row / array_col) give the pitch in the file's unit exactly."""
    in_um = _visium_tiny(False)
    assert not check_cells(in_um).warnings
    in_px = _visium_tiny(True)
    warning = _flag(in_px)
    assert warning is not None and "one array step is 365.2 apart" in warning and f"* {UM_PER_PX:g}," in warning
    # without the array's columns, the spacing is all there is: 265 µm reads closer to 100 µm as 72.6 "µm"
    bare = _visium_tiny(False, array_columns=False)
    assert _flag(bare) is not None
