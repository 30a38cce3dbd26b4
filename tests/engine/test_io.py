"""Reading images and cells, and writing results (gala_engine.io, gala_engine.demo)."""

from __future__ import annotations

import io as pyio
from pathlib import Path

import anndata as ad
import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import sparse

from gala_engine import constants
from gala_engine import io as gio
from gala_engine.demo import DEMOS, load_demo, truth_px_xy
from gala_engine.errors import GalaInputError
from gala_engine.io import (
    cell_signal,
    read_cells,
    read_image,
    spatial_yx,
    write_h5ad_atomic,
)

RNG = np.random.default_rng(0)


@pytest.fixture
def no_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if a TIFF test silently falls back to Pillow instead of tifffile."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("fell back to Pillow")

    monkeypatch.setattr(gio, "_read_pil", fail)


def _rgb8(h: int = 40, w: int = 60) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ formats


def test_png_rgb_from_path_and_bytes(tmp_path: Path) -> None:
    arr = _rgb8()
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    img = read_image(path)
    assert img.pixels.dtype == np.float32
    assert img.pixels.shape == (40, 60, 3)
    assert img.scale == 1.0 and img.full_shape == (40, 60) and img.source == str(path)
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-6)
    from_bytes = read_image(path.read_bytes())
    assert from_bytes.source == "<bytes>"
    np.testing.assert_array_equal(from_bytes.pixels, img.pixels)


def test_16bit_png_gray_and_rgb(tmp_path: Path) -> None:
    gray = RNG.integers(0, 65536, (30, 50), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.pixels.shape == (30, 50, 1) and img.is_gray
    np.testing.assert_allclose(img.pixels[..., 0], gray / 65535.0, atol=1e-6)

    rgb = RNG.integers(0, 65536, (30, 50, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])  # cv2 writes BGR
    img = read_image(tmp_path / "rgb16.png")  # Pillow keeps 8 of the 16 bits
    assert img.pixels.shape == (30, 50, 3)
    np.testing.assert_allclose(img.pixels, rgb / 65535.0, atol=1.01 / 255)


def test_16bit_tiff_rgb_exact(tmp_path: Path, no_pillow: None) -> None:
    rgb = RNG.integers(0, 65536, (30, 50, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb")
    img = read_image(tmp_path / "rgb16.tif")
    np.testing.assert_allclose(img.pixels, rgb / 65535.0, atol=1e-6)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :10, 3] = 0  # transparent → white
    rgba[:, 10:20, 3] = 255  # opaque → colour
    rgba[:, 20:, 3] = 128  # half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    for name in ("a.png", "a.tif"):
        px = read_image(tmp_path / name).pixels
        assert px.shape == (20, 30, 3)
        np.testing.assert_allclose(px[0, 0], [1, 1, 1], atol=1e-6)
        np.testing.assert_allclose(px[0, 15], [200 / 255, 0, 0], atol=1e-6)
        a = 128 / 255
        want = [200 / 255 * a + 1 - a, 1 - a, 1 - a]
        np.testing.assert_allclose(px[0, 25], want, atol=1e-6)


def test_grayscale_jpeg_and_miniswhite_tiff(tmp_path: Path) -> None:
    gray = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    Image.fromarray(gray).save(tmp_path / "g.jpg", quality=98)
    img = read_image(tmp_path / "g.jpg")
    assert img.pixels.shape == (48, 64, 1)
    np.testing.assert_allclose(img.pixels[..., 0], gray / 255.0, atol=0.03)

    tifffile.imwrite(tmp_path / "w.tif", gray, photometric="miniswhite")
    img = read_image(tmp_path / "w.tif")
    np.testing.assert_allclose(img.pixels[..., 0], 1 - gray / 255.0, atol=1e-6)


def test_float_tiff(tmp_path: Path) -> None:
    unit = RNG.random((20, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "u.tif", unit)
    np.testing.assert_allclose(read_image(tmp_path / "u.tif").pixels[..., 0], unit, atol=1e-6)

    wide = (unit * 300 - 100).astype(np.float32)  # outside [0, 1]: min–max rescaled
    wide[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "w.tif", wide)
    px = read_image(tmp_path / "w.tif").pixels[..., 0]
    assert np.isfinite(px).all() and px.min() == 0.0 and px.max() == 1.0
    ok = np.isfinite(wide)
    np.testing.assert_allclose(px[ok], (wide[ok] - np.nanmin(wide)) / np.ptp(wide[ok]), atol=1e-5)


def test_cmyk_jpeg_and_tiff(tmp_path: Path) -> None:
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=98)
    img = read_image(tmp_path / "c.jpg")
    assert img.pixels.shape == (24, 32, 3)
    np.testing.assert_allclose(img.pixels.mean(axis=(0, 1)), [1, 0, 0], atol=0.03)  # red

    cmyk = np.zeros((24, 32, 4), np.uint8)
    cmyk[..., 1] = 255  # magenta
    cmyk[..., 3] = 51  # 20 % black
    tifffile.imwrite(tmp_path / "c.tif", cmyk, photometric="separated")
    px = read_image(tmp_path / "c.tif").pixels
    np.testing.assert_allclose(px[0, 0], [0.8, 0.0, 0.8], atol=1e-6)


def test_palette_png_and_tiff(tmp_path: Path) -> None:
    idx = (np.arange(20 * 30).reshape(20, 30) % 4).astype(np.uint8)
    colors = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(colors.ravel().tolist())
    im.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png").pixels, colors[idx] / 255.0)

    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :4] = colors.T.astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "p.tif", idx, photometric="palette", colormap=cmap)
    np.testing.assert_allclose(read_image(tmp_path / "p.tif").pixels, colors[idx] / 255.0)


def test_lzw_tiff_falls_back_to_pillow(tmp_path: Path) -> None:
    arr = _rgb8()
    Image.fromarray(arr).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_allclose(read_image(tmp_path / "lzw.tif").pixels, arr / 255.0, atol=1e-6)


def test_multipage_tiff_reads_first_plane(tmp_path: Path, no_pillow: None) -> None:
    stack = RNG.integers(0, 256, (3, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "z.tif", stack, photometric="minisblack")
    img = read_image(tmp_path / "z.tif")
    np.testing.assert_allclose(img.pixels[..., 0], stack[0] / 255.0, atol=1e-6)


def test_multichannel_tiff_needs_channel(tmp_path: Path) -> None:
    stack = RNG.integers(0, 60000, (2, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.ome.tif", stack, metadata={"axes": "CYX"})
    with pytest.raises(GalaInputError, match="channel="):
        read_image(tmp_path / "c.ome.tif")
    img = read_image(tmp_path / "c.ome.tif", channel=1)
    np.testing.assert_allclose(img.pixels[..., 0], stack[1] / 65535.0, atol=1e-6)
    with pytest.raises(GalaInputError, match="2 channel"):
        read_image(tmp_path / "c.ome.tif", channel=2)


# ------------------------------------------------------------------------------ downsampling


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_downsample_keeps_bright_pixel_and_scale(tmp_path: Path, ext: str) -> None:
    full = np.zeros((203, 301, 3), np.uint8)
    r, c = 157, 233
    full[r, c] = 255
    path = tmp_path / f"b.{ext}"
    if ext == "png":
        Image.fromarray(full).save(path)
    else:
        tifffile.imwrite(path, full, photometric="rgb")
    img = read_image(path, max_side=100)
    k = 4  # ceil(301 / 100)
    assert img.scale == k and img.full_shape == (203, 301)
    assert img.pixels.shape == (-(-203 // k), -(-301 // k), 3)
    assert np.unravel_index(img.pixels[..., 0].argmax(), img.pixels.shape[:2]) == (
        r // k,
        c // k,
    )
    np.testing.assert_allclose(img.pixels[r // k, c // k], 1 / k**2, atol=1e-6)  # area average
    # partial edge blocks average only the pixels they cover
    full[-1, -1] = 255
    Image.fromarray(full).save(tmp_path / "e.png")
    edge = read_image(tmp_path / "e.png", max_side=100).pixels
    np.testing.assert_allclose(edge[-1, -1], 1 / ((203 - 200) * (301 - 300)), atol=1e-6)


@pytest.mark.parametrize("kind", ["memmap", "tiled", "bytes"])
def test_big_single_level_tiff_banded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, no_pillow: None
) -> None:
    monkeypatch.setattr(gio, "_BAND_BYTES", 20_000)  # force many bands
    full = RNG.integers(0, 65536, (517, 389, 3), dtype=np.uint16)
    path = tmp_path / "big.tif"
    if kind == "tiled":
        tifffile.imwrite(path, full, photometric="rgb", tile=(64, 64), compression="zlib")
    else:
        tifffile.imwrite(path, full, photometric="rgb")
    img = read_image(path.read_bytes() if kind == "bytes" else path, max_side=100)
    k = 6
    assert img.scale == k and img.pixels.shape == (87, 65, 3)
    want = full[:516, :384].reshape(86, k, 64, k, 3).mean(axis=(1, 3)) / 65535.0
    np.testing.assert_allclose(img.pixels[:86, :64], want, atol=1e-5)
    np.testing.assert_allclose(img.pixels[86, 64], full[516:, 384:].mean(axis=(0, 1)) / 65535, atol=1e-5)


def _write_pyramid(path: Path) -> None:
    """Base 1200×800 and SubIFD levels 600×400, 300×200; each level holds a different grey level
    and a bright pixel at the same tissue position."""
    with tifffile.TiffWriter(path) as tw:
        for i, f in enumerate((1, 2, 4)):
            level = np.full((1200 // f, 800 // f), 50 * (i + 1), np.uint8)
            level[960 // f, 640 // f] = 255
            kw = {"subifds": 2} if i == 0 else {"subfiletype": 1}
            tw.write(level, tile=(64, 64), compression="zlib", **kw)


def test_pyramidal_tiff_picks_smallest_sufficient_level(tmp_path: Path, no_pillow: None) -> None:
    path = tmp_path / "pyr.tif"
    _write_pyramid(path)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series[0].levels) == 3

    img = read_image(path, max_side=500)  # level 600×400 (long side ≥ 500), then ÷2
    assert img.full_shape == (1200, 800) and img.scale == 4.0
    assert img.pixels.shape == (300, 200, 1)
    assert np.median(img.pixels) == pytest.approx(100 / 255)  # grey of level 1
    assert np.unravel_index(img.pixels.argmax(), img.pixels.shape[:2]) == (240, 160)

    img = read_image(path, max_side=300)  # level 300×200 as is
    assert img.scale == 4.0 and np.median(img.pixels) == pytest.approx(150 / 255)
    img = read_image(path, max_side=100)  # level 300×200 ÷ 3
    assert img.scale == 12.0 and img.pixels.shape == (100, 67, 1)
    assert np.unravel_index(img.pixels.argmax(), img.pixels.shape[:2]) == (
        960 // 12,
        640 // 12,
    )
    img = read_image(path, max_side=None)
    assert img.scale == 1.0 and img.pixels.shape == (1200, 800, 1)
    assert np.median(img.pixels) == pytest.approx(50 / 255)


def test_pillow_bomb_guard_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    arr = np.zeros((120, 200, 3), np.uint8)
    arr[100, 150] = 255
    Image.fromarray(arr).save(tmp_path / "big.png")
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=95)
    tifffile.imwrite(tmp_path / "big.tif", arr, photometric="rgb")
    with pytest.raises(GalaInputError, match="too large|safety limit"):
        read_image(tmp_path / "big.png", max_side=50)
    assert Image.MAX_IMAGE_PIXELS == 5_000  # restored
    img = read_image(tmp_path / "big.jpg", max_side=50)  # decoded at reduced size (JPEG draft)
    assert img.scale == 4.0 and img.pixels.shape == (30, 50, 3) and img.full_shape == (120, 200)
    assert Image.MAX_IMAGE_PIXELS == 5_000
    with pytest.raises(GalaInputError, match="safety limit"):
        read_image(tmp_path / "big.jpg", max_side=None)
    assert read_image(tmp_path / "big.tif", max_side=None).pixels.shape == (120, 200, 3)


# ------------------------------------------------------------------------------------ errors


def test_bad_images(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("hello, I am text\n")
    Image.fromarray(_rgb8(64, 64)).save(tmp_path / "ok.png")
    (tmp_path / "trunc.png").write_bytes((tmp_path / "ok.png").read_bytes()[:200])
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    Image.new("L", (100, 5)).save(tmp_path / "thin.png")
    tifffile.imwrite(tmp_path / "thin.tif", np.zeros((5, 100), np.uint8))
    cases = {
        "empty.png": "empty",
        "notes.png": "not a readable image",
        "trunc.png": "corrupt|truncated|cannot read",
        "one.png": "at least 8",
        "thin.png": "at least 8",
        "thin.tif": "at least 8",
        "missing.png": "not found",
    }
    for name, msg in cases.items():
        with pytest.raises(GalaInputError, match=msg):
            read_image(tmp_path / name)
    with pytest.raises(GalaInputError, match="not a readable image"):
        read_image(b"\x00\x01garbage" * 50)
    with pytest.raises(GalaInputError, match="cannot read the TIFF"):
        read_image(b"II*\x00" + b"\xff" * 100)
    for kw in ({}, {"tile": (16, 16), "compression": "zlib"}):
        buf = pyio.BytesIO()
        tifffile.imwrite(buf, RNG.random((64, 64)).astype(np.float32), **kw)
        cut = buf.getvalue()[: len(buf.getvalue()) // 2]
        (tmp_path / "cut.tif").write_bytes(cut)
        for src in (cut, tmp_path / "cut.tif"):
            with pytest.raises(GalaInputError, match="cannot read the TIFF"):
                read_image(src)
    with pytest.raises(GalaInputError, match="empty"):
        read_image(b"")
    with pytest.raises(GalaInputError, match="max_side"):
        read_image(tmp_path / "ok.png", max_side=0)


def test_unsupported_pil_mode_raises() -> None:
    class Fake:  # a mode Pillow may hand us that we do not convert
        mode = "RGB;XX"

    with pytest.raises(GalaInputError, match="unsupported pixel mode 'RGB;XX'"):
        gio._pil_layout(Fake(), "fake.img", None)


# ----------------------------------------------------------------------------------- cells


def _cells(n: int = 6, dense: bool = False) -> ad.AnnData:
    counts = np.array(RNG.integers(0, 5, (n, 4)), dtype=np.float32)
    adata = ad.AnnData(X=counts if dense else sparse.csr_matrix(counts))
    adata.var_names = ["Gfap", "Snap25", "Mbp", "Slc17a7"]
    adata.obsm["spatial"] = RNG.random((n, 2)) * 100
    return adata


def test_read_cells_ok_from_path_and_bytes(tmp_path: Path) -> None:
    adata = _cells()
    adata.write_h5ad(tmp_path / "c.h5ad")
    back = read_cells(tmp_path / "c.h5ad")
    np.testing.assert_array_equal(back.obsm["spatial"], adata.obsm["spatial"])
    back = read_cells((tmp_path / "c.h5ad").read_bytes())
    assert back.shape == adata.shape


def test_read_cells_errors(tmp_path: Path) -> None:
    (tmp_path / "text.h5ad").write_text("cell,x,y\n1,2,3\n")
    with pytest.raises(GalaInputError, match="not an AnnData .h5ad file"):
        read_cells(tmp_path / "text.h5ad")
    with pytest.raises(GalaInputError, match="not an AnnData .h5ad file"):
        read_cells(b"cell,x,y\n1,2,3\n")

    a = _cells()
    a.obsm["X_xy"] = a.obsm.pop("spatial")
    a.obs["Center_X"], a.obs["center_y"] = 1.0, 2.0
    a.write_h5ad(tmp_path / "nospatial.h5ad")
    with pytest.raises(
        GalaInputError,
        match=r"obsm keys present: \['X_xy'\].*Rename.*obs\[\['Center_X', 'center_y'\]\]",
    ):
        read_cells(tmp_path / "nospatial.h5ad")

    a = _cells()
    a.obsm["spatial"] = RNG.random((a.n_obs, 3))
    a.write_h5ad(tmp_path / "xyz.h5ad")
    with pytest.raises(GalaInputError, match=r"3 columns.*\[:, :2\]"):
        read_cells(tmp_path / "xyz.h5ad")

    a = _cells()
    a.obsm["spatial"][1, 0] = np.nan
    a.obsm["spatial"][4, 1] = np.inf
    a.write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(GalaInputError, match="2 of 6 rows with NaN or inf"):
        read_cells(tmp_path / "nan.h5ad")

    a = _cells()[:0].copy()
    a.write_h5ad(tmp_path / "none.h5ad")
    with pytest.raises(GalaInputError, match="no cells"):
        read_cells(tmp_path / "none.h5ad")

    import h5py

    with h5py.File(tmp_path / "plain.h5ad", "w") as f:
        f["junk"] = np.arange(3)
    with pytest.raises(GalaInputError, match="HDF5 but not a readable AnnData|no cells|obsm"):
        read_cells(tmp_path / "plain.h5ad")


def test_cell_signal_sparse_dense_gene() -> None:
    a = _cells(dense=False)
    d = a.copy()
    d.X = a.X.toarray()
    want = a.X.toarray().sum(axis=1)
    for x in (a, d):
        tot = cell_signal(x)
        assert tot.dtype == np.float64 and tot.shape == (x.n_obs,)
        np.testing.assert_allclose(tot, want)
        np.testing.assert_array_equal(cell_signal(x, constants.SIGNAL_DENSITY), np.ones(x.n_obs))
        np.testing.assert_allclose(cell_signal(x, "Mbp"), a.X.toarray()[:, 2])
    with pytest.raises(GalaInputError, match=r"'Gfapp'.*close matches: \['Gfap'\]"):
        cell_signal(a, "Gfapp")
    with pytest.raises(GalaInputError, match="close matches.*'Gfap'"):
        cell_signal(a, "GFAP")
    d.X[0, 0] = -1.0
    with pytest.raises(GalaInputError, match="negative"):
        cell_signal(d)
    a.X.data[0] = -2.0
    with pytest.raises(GalaInputError, match="negative"):
        cell_signal(a)


def test_spatial_yx_swaps_columns() -> None:
    a = _cells()
    yx = spatial_yx(a)
    assert yx.dtype == np.float64
    np.testing.assert_array_equal(yx, a.obsm["spatial"][:, ::-1])


# ----------------------------------------------------------------------------------- writing


def test_write_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _cells()
    src = tmp_path / "in.h5ad"
    a.write_h5ad(src)
    out = write_h5ad_atomic(a, tmp_path / "out.h5ad", protect=[src])
    assert read_cells(out).shape == a.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "out.h5ad"]

    before = src.read_bytes()
    for target in (src, tmp_path / "sub" / ".." / "in.h5ad", str(src)):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(GalaInputError, match="refusing to overwrite"):
            write_h5ad_atomic(a, target, protect=[str(src)])
    assert src.read_bytes() == before

    def boom(self: ad.AnnData, filename: Path, **kwargs: object) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", boom)
    with pytest.raises(OSError, match="disk full"):
        write_h5ad_atomic(a, tmp_path / "out.h5ad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad", "out.h5ad", "sub"]
    assert read_cells(tmp_path / "out.h5ad").shape == a.shape  # old output intact
    with pytest.raises(GalaInputError, match="does not exist"):
        write_h5ad_atomic(a, tmp_path / "nope" / "x.h5ad")


# ------------------------------------------------------------------------------------- demos


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_truth_puts_cells_inside_image(name: str) -> None:
    demo = load_demo(name)
    assert demo.name == name and demo.description == DEMOS[name]
    assert demo.um_to_px.shape == (2, 3) and demo.image_path.is_file()
    img = read_image(demo.image_path, max_side=512)
    h, w = img.full_shape
    xy = truth_px_xy(demo)
    assert xy.shape == (demo.adata.n_obs, 2)
    assert (xy[:, 0] >= 0).all() and (xy[:, 0] < w).all()
    assert (xy[:, 1] >= 0).all() and (xy[:, 1] < h).all()
    # the truth scale is what the data README says (px per µm)
    px_per_um = np.sqrt(abs(np.linalg.det(demo.um_to_px[:, :2])))
    want = {"merfish_mini": 9.2059, "visium_tiny": 0.0621, "visium_dg": 0.0702}[name]
    assert px_per_um == pytest.approx(want, rel=0.01)


def test_unknown_demo() -> None:
    with pytest.raises(GalaInputError, match="merfish_mini"):
        load_demo("nope")


def test_bytesio_roundtrip_helpers() -> None:
    buf = pyio.BytesIO()
    Image.fromarray(_rgb8(16, 16)).save(buf, format="PNG")
    assert read_image(buf.getvalue()).pixels.shape == (16, 16, 3)
