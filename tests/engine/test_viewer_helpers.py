"""The viewer's numerics: the "before" placement on the tissue, the screen image and its crops, the image record."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from gala_engine.demo import load_demo
from gala_engine.display import adjust, crop_for_screen, screen_image, stretch_limits
from gala_engine.io import LoadedImage, read_image, spatial_yx
from gala_engine.placement import apply_placement, placement_affine, tissue_moments
from gala_engine.provenance import image_record


def _disc_image(*, h: int = 300, w: int = 400, centre=(260.0, 120.0), radius: float = 70.0, dark_tissue: bool,
                scale: float = 1.0) -> LoadedImage:
    """A section as a filled disc: bright on black (fluorescence) or purple on white (brightfield)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    inside = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    rng = np.random.default_rng(0)
    if dark_tissue:
        px = np.ones((h, w, 3), np.float32)
        px[inside] = np.array([0.55, 0.3, 0.6], np.float32) + 0.1 * rng.random((inside.sum(), 3), np.float32)
    else:
        px = 0.03 * rng.random((h, w, 1), np.float32)
        px[inside] = 0.5 + 0.4 * rng.random((inside.sum(), 1), np.float32)
    return LoadedImage(pixels=np.clip(px, 0, 1), scale=scale, full_shape=(int(h * scale), int(w * scale)),
                       source="<bytes>")


def _cells_in_disc(n: int = 3000, radius_um: float = 700.0, offset=(5000.0, -2000.0)) -> np.ndarray:
    rng = np.random.default_rng(1)
    r = radius_um * np.sqrt(rng.random(n))
    t = rng.random(n) * 2 * np.pi
    return np.c_[r * np.cos(t), r * np.sin(t)] + np.asarray(offset)


@pytest.mark.parametrize("dark_tissue", [False, True])
def test_placement_matches_the_tissue_centre_and_size(dark_tissue):
    img = _disc_image(dark_tissue=dark_tissue, scale=2.0)  # full-res disc: centre (520, 240) px, radius 140 px
    xy = _cells_in_disc()
    placed = apply_placement(placement_affine(xy, img), xy)
    np.testing.assert_allclose(placed.mean(axis=0), [520.0, 240.0], atol=8.0)
    radius = np.sqrt(2.0) * np.sqrt(((placed - placed.mean(0)) ** 2).sum(1).mean())  # RMS radius of a disc = R/√2
    # brightfield: the stain's mask is the disc; fluorescence: the edge feature's mask is blurred ~1 % of the
    # image wider (it matches the MERFISH demo's true scale to 0.2 %, test below)
    assert radius == pytest.approx(140.0, rel=0.08 if dark_tissue else 0.16)
    M = placement_affine(xy, img)
    assert M[0, 1] == M[1, 0] == 0 and M[0, 0] == M[1, 1] > 0  # no rotation, no mirror, one scale


def test_placement_on_the_demo_is_close_to_the_truth():
    demo = load_demo("merfish_mini")
    img = read_image(demo.image_path, max_side=1024)
    xy = spatial_yx(demo.adata)[:, ::-1]
    truth = xy @ demo.um_to_px[:, :2].T + demo.um_to_px[:, 2]
    M = placement_affine(xy, img)
    assert M[0, 0] == pytest.approx(demo.um_to_px[0, 0], rel=0.1)  # µm → px scale
    placed = apply_placement(M, xy)
    assert np.median(np.linalg.norm(placed - truth, axis=1)) < 0.05 * max(img.full_shape)
    assert np.median(np.linalg.norm(xy - truth, axis=1)) > 10 * np.median(np.linalg.norm(placed - truth, axis=1))


def test_a_blank_image_centres_and_fits_the_cells():
    img = LoadedImage(pixels=np.full((100, 200, 1), 0.5, np.float32), scale=1.0, full_shape=(100, 200),
                      source="<bytes>")
    assert tissue_moments(img) is None
    xy = _cells_in_disc(radius_um=1000.0)
    placed = apply_placement(placement_affine(xy, img), xy)
    assert placed[:, 0].min() >= 0 and placed[:, 0].max() <= 200 and placed[:, 1].min() >= 0
    assert placed[:, 1].max() <= 100
    np.testing.assert_allclose(placed.mean(0), [99.5, 49.5], atol=3.0)


def test_screen_image_averages_instead_of_skipping_rows():
    stripes = np.zeros((400, 400, 1), np.float32)
    stripes[::2] = 1.0  # one-pixel stripes: row skipping shows all-white or all-black, averaging shows grey
    img = LoadedImage(pixels=stripes, scale=3.0, full_shape=(1200, 1200), source="<bytes>")
    shot = screen_image(img, max_side=100)
    assert shot.rgb.shape == (100, 100, 3) and shot.rgb.dtype == np.uint8
    assert shot.rgb.std() < 3 and 100 < shot.rgb.mean() < 155
    assert shot.dx == shot.dy == 12.0 and shot.x0 == 5.5  # 12 full-res px per screen px, centres


def test_adjust_brightness_contrast_gamma():
    px = np.linspace(0, 1, 11, dtype=np.float32).reshape(1, 11, 1)
    plain = adjust(px)[0, :, 0].astype(int)
    assert plain[0] == 0 and plain[-1] == 255 and plain[5] == 128
    assert adjust(px, gamma=0.5)[0, 2, 0] > plain[2]  # γ < 1 lightens the dark end
    assert adjust(px, brightness=0.2)[0, 5, 0] == 179
    high = adjust(px, contrast=2.0)[0, :, 0].astype(int)
    assert high[3] < plain[3] and high[7] > plain[7] and high[5] == plain[5]
    lo, hi = stretch_limits(np.linspace(0, 1, 10_000, dtype=np.float32).reshape(100, 100, 1))
    assert lo == pytest.approx(0.01, abs=2e-3) and hi == pytest.approx(0.995, abs=2e-3)


def test_crop_is_at_loaded_resolution_and_in_place():
    px = np.random.default_rng(0).random((200, 300, 3)).astype(np.float32)
    img = LoadedImage(pixels=px, scale=2.0, full_shape=(400, 600), source="<bytes>")
    shot = crop_for_screen(img, (100.0, 299.0), (50.0, 149.0))
    assert shot.dx == shot.dy == 2.0  # one loaded pixel per screen pixel
    assert shot.rgb.shape == (50, 100, 3)
    np.testing.assert_array_equal(shot.rgb, adjust(px[25:75, 50:150]))
    assert shot.x0 == pytest.approx(50 * 2 + 0.5) and shot.y0 == pytest.approx(25 * 2 + 0.5)  # loaded centre (u+.5)s-.5
    assert crop_for_screen(img, (700.0, 900.0), (0.0, 10.0)) is None
    big = crop_for_screen(img, (0.0, 599.0), (0.0, 399.0), max_side=60)
    assert max(big.rgb.shape[:2]) == 60


def test_image_record_names_size_and_checksum(tmp_path):
    path = tmp_path / "spool_123" / "image.png"
    path.parent.mkdir()
    path.write_bytes(b"\x89PNG not really" * 100)
    rec = image_record(path, name="section_4.png", full_shape=(300, 500))
    assert rec == {"file": "section_4.png", "bytes": 1500, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                   "height_px": 300, "width_px": 500}
    assert image_record(None, name="x.tif") == {"file": "x.tif"}
    assert image_record(tmp_path / "gone.png")["file"] == "gone.png"


def test_native_crop_reads_the_file_at_full_resolution(tmp_path):
    from PIL import Image

    from gala_engine.display import native_crop

    rng = np.random.default_rng(3)
    full = (rng.random((400, 600, 3)) * 255).astype(np.uint8)
    path = tmp_path / "section.png"
    Image.fromarray(full).save(path)
    loaded = read_image(path, max_side=150)  # reduced 4×
    assert loaded.scale == 4.0
    reduced = crop_for_screen(loaded, (100.0, 299.0), (40.0, 139.0))
    assert reduced.dx == 4.0
    shot = native_crop(path, (100.0, 299.0), (40.0, 139.0), full_shape=loaded.full_shape)
    assert shot.dx == shot.dy == 1.0 and shot.rgb.shape == (100, 200, 3)
    np.testing.assert_array_equal(shot.rgb, full[40:140, 100:300])  # the file's own pixels
    assert shot.x0 == 100.0 and shot.y0 == 40.0
    assert native_crop(path, (0.0, 10.0), (0.0, 10.0), full_shape=loaded.full_shape, max_pixels=1000) is None
    assert native_crop(tmp_path / "gone.png", (0.0, 10.0), (0.0, 10.0), full_shape=(400, 600)) is None
