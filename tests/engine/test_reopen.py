"""An aligned .h5ad read back as a result: the same cell positions as the file's obsm['spatial_he'] (warp
included); malformed uns['gala'] refused; older files without the warp give the affine and say so."""

from __future__ import annotations

import anndata
import numpy as np
import pytest

from gala_engine import constants
from gala_engine.demo import load_demo
from gala_engine.errors import GalaInputError
from gala_engine.io import read_image, spatial_yx
from gala_engine.params import AlignParams
from gala_engine.reopen import aligned_result
from gala_engine.section import align_section, prepare_section, write_aligned


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    demo = load_demo("visium_tiny")
    r = prepare_section(demo.adata, read_image(demo.image_path))
    result = align_section(r, AlignParams(num_generations=3, sol_per_pop=10, num_parents_mating=5, ga_restarts=1,
                                          refine_iterations=3, num_iterations=20, lddmm_validate=False,
                                          seed_population=False))
    path = write_aligned(demo.adata, result, tmp_path_factory.mktemp("h5") / "aligned.h5ad")
    return result, anndata.read_h5ad(path)


def test_the_result_reproduces_the_files_positions_warp_included(aligned):
    original, adata = aligned
    assert np.abs(original.v).max() > 0  # a real warp
    back = aligned_result(adata)
    xy = spatial_yx(adata)[:, ::-1]
    np.testing.assert_allclose(back.cells_to_image(xy), adata.obsm[constants.ALIGNED_KEY], atol=1e-6)
    np.testing.assert_allclose(back.cells_to_image(xy, deformed=False), adata.obsm[constants.ALIGNED_AFFINE_KEY],
                               atol=1e-6)
    assert back.origin == {"source": "file", "note": "opened from an aligned .h5ad"}
    assert back.params["num_iterations"] == 20 and back.params["a"] is None  # '' in the file → None


def test_plain_cells_have_no_result_and_bad_ones_are_refused(aligned):
    _, adata = aligned
    assert aligned_result(load_demo("visium_tiny").adata) is None
    bad = adata.copy()
    bad.uns["gala"]["A"] = np.full((3, 3), np.nan)
    with pytest.raises(GalaInputError, match="finite"):
        aligned_result(bad)
    bad = adata.copy()
    bad.uns["gala"]["v"] = np.zeros((1, 3, 3, 2))
    with pytest.raises(GalaInputError, match="does not fit"):
        aligned_result(bad)
    old = adata.copy()
    for key in ("v", "xv_rows", "xv_cols"):
        del old.uns["gala"][key]
    back = aligned_result(old)
    assert "does not hold the warp" in back.origin["note"]
    np.testing.assert_allclose(back.cells_to_image(spatial_yx(old)[:, ::-1], deformed=False),
                               old.obsm[constants.ALIGNED_AFFINE_KEY], atol=1e-6)  # the affine is still exact
