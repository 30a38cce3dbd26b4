"""The image's tissue mask and empty-slide test (gala_engine.features.tissue_mask, search.shows_glass) on IHC.

IHC (pale hematoxylin counterstain + dark DAB) has three stain levels: glass, pale tissue, dark stain. Otsu's
threshold on the stain used to split the tissue itself (pale tissue called "not tissue"), and the empty-slide test
(a fraction of the 99th percentile) fired on a frame filled with tissue, so the "tissue" fitness could pull evenly
packed cells onto the darker part of the tissue (issue 11). Where the histogram shows an empty-slide mode, the mask
is now split at the valley above it; without one (a frame filled with tissue) the whole frame is tissue."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gala_engine import image_feature
from gala_engine.features import glass_split, stain_total, tissue_mask
from gala_engine.search import shows_glass


def _ihc_like(rng: np.random.Generator, glass_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """A two-channel stain raster (hematoxylin, total) 120 × 120 and its tissue: empty slide in the first
    ``glass_cols`` columns, pale counterstained tissue elsewhere (its hematoxylin varying ±40 % over ~5
    pixels), dark DAB blobs covering ~30 % of the tissue."""
    h, w = 120, 120
    tissue = np.mgrid[0:h, 0:w][1] >= glass_cols

    def texture(sigma: float) -> np.ndarray:
        field = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), sigma)
        return field / field.std()

    dab = tissue & (texture(4.0) > 0.52)  # ~30 % of the tissue
    hema = np.where(tissue, 0.12 * (1.0 + 0.4 * texture(5.0)), 0.0) + rng.normal(0.0, 0.005, (h, w))
    total = hema + np.where(dab, 1.0, 0.0) + rng.normal(0.0, 0.005, (h, w))
    return np.stack([hema, total]).clip(0, None).astype(np.float32), tissue


def test_pale_counterstained_tissue_is_tissue_on_ihc():
    raster, truth = _ihc_like(np.random.default_rng(0), glass_cols=30)  # 25 % empty slide
    mask = tissue_mask(raster) > 0.5
    assert mask[truth].mean() > 0.97  # Otsu called only the DAB blobs (~30 % of the tissue) tissue
    assert mask[:, :26].mean() < 0.05  # the glass (away from the blurred edge) stays glass
    assert shows_glass(raster)


def test_an_ihc_frame_filled_with_tissue_has_no_empty_slide_mode():
    raster, truth = _ihc_like(np.random.default_rng(1), glass_cols=0)
    assert truth.all()
    assert glass_split(stain_total(raster)) == ("none", None)  # no empty-slide mode: the whole frame is tissue
    assert (tissue_mask(raster) > 0.5).all()


def _agreement(name: str, crop: tuple[slice, slice] = (slice(None), slice(None))) -> tuple[float, float, bool]:
    """(agreement with the validation generator's tissue mask, engine's tissue fraction, shows_glass) on the
    feature raster of a committed image, about 128 pixels a side."""
    from tests.validation.cases import IMAGES, load_image
    from tests.validation.cases import tissue_mask as generator_mask

    image = np.ascontiguousarray(load_image(name)[crop])
    _, _, raster = image_feature(image, reduce=max(max(image.shape[:2]) // 128, 1))  # ~128 px a side
    truth = generator_mask(image, IMAGES[name].mask).astype(np.uint8)
    truth = cv2.resize(truth, raster.shape[:0:-1], interpolation=cv2.INTER_AREA) > 0
    mask = tissue_mask(raster) > 0.5
    return float((mask == truth).mean()), float(mask.mean()), shows_glass(raster)


def test_ki67_ihc_mask_agrees_with_the_generators_mask():
    agree, _, glass = _agreement("os2_ki67")  # 16 % empty slide around IHC tissue
    assert glass and agree > 0.93  # Otsu: 0.84 (pale tissue called glass)


def test_a_frame_filled_with_tissue_is_all_tissue():
    """No empty-slide mode (a tile inside the tissue): the whole frame is tissue. Otsu's split called the paler
    half of the tissue "not tissue", and the QC flags then read 50 % of a right pose's cells as off the tissue."""
    rng = np.random.default_rng(2)
    raster = cv2.GaussianBlur(rng.uniform(0.3, 1.0, (60, 70)).astype(np.float32), (0, 0), 3.0)[None]
    assert glass_split(stain_total(raster)) == ("none", None)
    assert (tissue_mask(raster) == 1.0).all()


def test_a_ki67_tile_inside_the_tissue_is_tissue():
    agree, fraction, _ = _agreement("os2_ki67", (slice(500, None), slice(450, None)))  # 5 % lumen, no glass border
    assert fraction > 0.99 and agree > 0.93  # Otsu: 43 % of the frame, agreement 0.47


@pytest.mark.parametrize("name, floor", [("visium_tiny_he", 0.95), ("visium_dg_he", 0.97)])
def test_he_masks_keep_their_agreement(name: str, floor: float):
    agree, _, _ = _agreement(name)
    assert agree > floor
