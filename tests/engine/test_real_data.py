"""Real tissue (bundled, see gala_engine/demo_data/README.md): cells moved by a known rotation + flip +
shift must land back on their ground-truth image positions."""

from __future__ import annotations

import numpy as np
import pytest

from gala_engine import AlignParams
from gala_engine.demo import load_demo, truth_px_xy
from gala_engine.io import read_image
from gala_engine.section import align_section, median_error_px, prepare_section


def _moved(demo, angle: float, flip: bool, shift: tuple[float, float]):
    xy = np.asarray(demo.adata.obsm["spatial"], dtype=np.float64)
    theta = np.deg2rad(angle)
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    if flip:
        R = R @ np.diag([-1.0, 1.0])
    centre = xy.mean(0)
    adata = demo.adata.copy()
    adata.obsm["spatial"] = (xy - centre) @ R.T + centre + np.asarray(shift)
    return adata


def _median_error_um(name: str, angle: float, flip: bool, feature: str = "auto", **params) -> float:
    demo = load_demo(name)
    adata = _moved(demo, angle, flip, (250.0, -400.0))
    rasters = prepare_section(adata, read_image(demo.image_path), feature=feature)
    result = align_section(rasters, AlignParams(**params))
    predicted = result.cells_to_image(np.asarray(adata.obsm["spatial"]), deformed=params.get("num_iterations", 1) > 0)
    px_per_um = np.sqrt(abs(np.linalg.det(demo.um_to_px[:, :2])))
    return median_error_px(predicted, truth_px_xy(demo)) / px_per_um


@pytest.mark.slow
@pytest.mark.parametrize("angle, flip", [(0.0, False), (130.0, True)], ids=["as-is", "rot130-flip"])
def test_merfish_cells_land_on_their_dapi_positions(angle, flip):
    assert _median_error_um("merfish_mini", angle, flip, num_iterations=0) < 5.0  # half a nucleus


@pytest.mark.slow
@pytest.mark.parametrize("angle, flip", [(0.0, False), (130.0, True)], ids=["as-is", "rot130-flip"])
def test_visium_spots_land_on_the_he_within_three_pixels(angle, flip):
    demo = load_demo("visium_dg")
    px_per_um = np.sqrt(abs(np.linalg.det(demo.um_to_px[:, :2])))
    # darkness (the feature before issue 11) against the hand-set truth (~1 px): < half the pitch
    assert _median_error_um("visium_dg", angle, flip, feature="inverted", num_iterations=0) * px_per_um < 3.0


@pytest.mark.slow
@pytest.mark.xfail(reason="the default nuclei (hematoxylin) + tissue feature at 14 µm/px (nuclei unresolved) landed "
                   "3.1 / 5.4 px from the hand-set truth at poses it scores above that truth (R 0.666 vs 0.652), and "
                   "once 77 px (rot130, another torch thread count): this image fills with tissue, so only the "
                   "texture under the spots is scored. Since the last refinement reads the image's mirror beyond its "
                   "frame (gala(tissue_beyond_frame=True)): 2.2 / 1.5 px; kept non-strict for the thread-count "
                   "outlier", strict=False)
@pytest.mark.parametrize("angle, flip", [(0.0, False), (130.0, True)], ids=["as-is", "rot130-flip"])
def test_visium_spots_with_the_default_feature_land_within_three_pixels(angle, flip):
    demo = load_demo("visium_dg")
    px_per_um = np.sqrt(abs(np.linalg.det(demo.um_to_px[:, :2])))
    assert _median_error_um("visium_dg", angle, flip, num_iterations=0) * px_per_um < 3.0


@pytest.mark.slow
@pytest.mark.xfail(reason="the data do not identify the pose (issue 2 note): 100 spots drawn at random over the "
                   "tissue carry no image contrast - the objective scores the true pose below wrong ones "
                   "(ncc_support -0.05 vs 0.28) - and the near-rectangular outline is almost mirror-symmetric",
                   strict=False)
def test_sparse_visium_fixture_lands_on_the_he_within_three_pixels():
    demo = load_demo("visium_tiny")
    px_per_um = np.sqrt(abs(np.linalg.det(demo.um_to_px[:, :2])))
    assert _median_error_um("visium_tiny", 130.0, True, num_iterations=0) * px_per_um < 3.0
