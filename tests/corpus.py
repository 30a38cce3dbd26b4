"""The corpus of malformed and awkward inputs, built by code (no committed binaries).

Each :class:`Case` writes one file (cells ``.h5ad`` or an image) into a folder and says what must
happen: ``expect`` is a regex of the error message, or ``"ok"`` (legitimate input, loaded and checked
by ``check``; ``warn`` is a regex one of the warnings must match). A cells case is paired with
:func:`good_image`, an image case with :func:`good_cells`. The engine API, CLI and app tests
(``tests/engine/test_corpus.py``, ``tests/cli/test_corpus.py``, ``tests/app/test_corpus.py``) all
iterate over :data:`CASES`.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import tifffile
from PIL import Image
from scipy import sparse

from gala_engine import constants

N_CELLS = 400
GENES = ["Gfap", "Snap25", "Mbp", "Slc17a7", "Pvalb"]


@dataclass(frozen=True)
class Case:
    """One input of the corpus."""

    name: str
    kind: str  # "cells" or "image"
    build: Callable[[Path], Path]
    expect: str  # regex of the GalaInputError message, or "ok"
    warn: str | None = None  # ok cases: a regex one warning must match
    check: Callable[[Any], None] | None = None  # ok cases: asserts on the loaded AnnData / LoadedImage
    signal: str = constants.SIGNAL_TOTAL_COUNTS
    app: bool = True  # the app can produce this input (an unknown gene cannot be picked in the app)

    @property
    def ok(self) -> bool:
        return self.expect == "ok"


# ------------------------------------------------------------------------------- base inputs


def base_adata(n: int = N_CELLS, *, seed: int = 0, dense: bool = False) -> ad.AnnData:
    """``n`` cells on a jittered 12 µm grid (x, y in µm) with Poisson counts of 5 genes."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n] * 12.0
    xy = grid + rng.uniform(-3, 3, grid.shape) + [500.0, 800.0]
    # more counts in the middle: the cell raster has structure
    centre = xy.mean(0)
    lam = 2 + 20 * np.exp(-np.sum((xy - centre) ** 2, 1) / (2 * 60.0**2))
    counts = rng.poisson(lam[:, None] * np.ones(len(GENES))).astype(np.float32)
    adata = ad.AnnData(counts if dense else sparse.csr_matrix(counts))
    adata.obs_names = [f"cell{i}" for i in range(n)]
    adata.var_names = GENES
    adata.obsm[constants.SPATIAL_KEY] = xy
    return adata


def base_rgb(h: int = 96, w: int = 128) -> np.ndarray:
    """An H&E-like RGB uint8 image: pinkish background with a dark blob."""
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (2 * (min(h, w) / 5) ** 2))
    rgb = np.stack([240 - 120 * blob, 200 - 150 * blob, 220 - 60 * blob], -1)
    return np.clip(rgb + np.random.default_rng(1).normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)


def good_cells(folder: Path) -> Path:
    """A valid cells file (the partner of every image case)."""
    return _write_h5ad(base_adata(), folder / "good_cells.h5ad")


def good_image(folder: Path) -> Path:
    """A valid RGB PNG (the partner of every cells case)."""
    path = folder / "good_image.png"
    Image.fromarray(base_rgb()).save(path)
    return path


def _write_h5ad(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


def _cells(name: str, mutate: Callable[[ad.AnnData], ad.AnnData | None], **kw: Any) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        adata = base_adata(**kw)
        out = mutate(adata)
        adata = adata if out is None else out
        return _write_h5ad(adata, folder / f"{name}.h5ad")

    return build


def _raw(name: str, data: Callable[[Path], bytes]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data(folder))
        return path

    return build


# ------------------------------------------------------------------------------ cells builders


def _truncated_h5ad(folder: Path) -> bytes:
    data = good_cells(folder).read_bytes()
    return data[: len(data) // 2]


def _plain_hdf5(folder: Path) -> bytes:
    import h5py

    path = folder / "plain_tmp.h5"
    with h5py.File(path, "w") as f:
        f["counts"] = np.arange(12).reshape(3, 4)
    return path.read_bytes()


def _one_d_spatial(folder: Path) -> bytes:
    import h5py

    path = _write_h5ad(base_adata(), folder / "oned_tmp.h5ad")
    with h5py.File(path, "a") as f:
        attrs = dict(f["obsm/spatial"].attrs)
        del f["obsm/spatial"]
        f["obsm/spatial"] = np.arange(N_CELLS, dtype=np.float64)
        f["obsm/spatial"].attrs.update(attrs)
    return path.read_bytes()


def _set_spatial(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[ad.AnnData], None]:
    def mutate(a: ad.AnnData) -> None:
        a.obsm[constants.SPATIAL_KEY] = fn(np.asarray(a.obsm[constants.SPATIAL_KEY], np.float64).copy())

    return mutate


def _put(xy: np.ndarray, rows: Any, value: float) -> np.ndarray:
    xy[rows] = value
    return xy


SPACE_RANGER_UM_PER_PX = 0.2738  # a Visium full-resolution H&E's pixel


def _space_ranger(in_pixels: bool) -> Callable[[ad.AnnData], None]:
    """Spots 100 µm apart with scanpy.read_visium's scale factors; positions in full-resolution pixels (as Space
    Ranger writes them) or already in µm."""

    def mutate(a: ad.AnnData) -> None:
        xy = np.asarray(a.obsm[constants.SPATIAL_KEY], np.float64) * (100.0 / 12.0)
        a.obsm[constants.SPATIAL_KEY] = xy / SPACE_RANGER_UM_PER_PX if in_pixels else xy
        a.uns["spatial"] = {"V1_Section": {"scalefactors": {
            "spot_diameter_fullres": 55.0 / SPACE_RANGER_UM_PER_PX, "fiducial_diameter_fullres": 89.5 / SPACE_RANGER_UM_PER_PX,
            "tissue_hires_scalef": 0.17, "tissue_lowres_scalef": 0.051}}}

    return mutate


def _odd_uns_spatial(a: ad.AnnData) -> None:
    a.uns["spatial"] = {"lib": {"scalefactors": {"spot_diameter_fullres": "wide", "microns_per_pixel": -1.0}},
                        "other": "not a dict", "arr": {"scalefactors": np.array([1.0, 2.0])}}


def _no_spatial(a: ad.AnnData) -> None:
    del a.obsm[constants.SPATIAL_KEY]


def _spatial_in_obs(a: ad.AnnData) -> None:
    xy = a.obsm.pop(constants.SPATIAL_KEY)
    a.obs["x_centroid"], a.obs["y_centroid"] = xy[:, 0], xy[:, 1]


def _duplicated(a: ad.AnnData) -> ad.AnnData:
    b = a[: N_CELLS // 4].copy()
    b.obs_names = [f"dup{i}" for i in range(b.n_obs)]
    return ad.concat([a, b], merge="same", uns_merge="same")


def _dup_names(a: ad.AnnData) -> None:
    a.obs_names = [f"cell{i // 2}" for i in range(a.n_obs)]


def _zero_counts(a: ad.AnnData) -> None:
    a.X = sparse.csr_matrix(a.shape, dtype=np.float32)


def _negative(a: ad.AnnData) -> None:
    X = a.X.toarray()
    a.X = np.log1p(X) - np.log1p(X).mean(0)  # scaled, as after sc.pp.scale


def _nan_x(a: ad.AnnData) -> None:
    X = a.X.toarray()
    X[3, 1] = np.nan
    a.X = X


def _no_genes(a: ad.AnnData) -> ad.AnnData:
    b = ad.AnnData(np.zeros((a.n_obs, 0), np.float32), obs=a.obs)
    b.obsm[constants.SPATIAL_KEY] = a.obsm[constants.SPATIAL_KEY]
    return b


def _string_coords(a: ad.AnnData) -> None:
    xy = a.obsm[constants.SPATIAL_KEY]
    a.obsm[constants.SPATIAL_KEY] = np.array([[f"{x:.1f}um", f"{y:.1f}um"] for x, y in xy], dtype=object)


# ------------------------------------------------------------------------------ image builders


def _png(arr: np.ndarray, mode: str | None = None) -> Callable[[Path], bytes]:
    def data(folder: Path) -> bytes:
        buf = io.BytesIO()
        (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, format="PNG")
        return buf.getvalue()

    return data


def _tiff(arr: np.ndarray, **kw: Any) -> Callable[[Path], bytes]:
    def data(folder: Path) -> bytes:
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        return buf.getvalue()

    return data


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_bomb(folder: Path) -> bytes:
    """A PNG that declares 60000×60000 RGB pixels (10.8 GB decoded) and carries a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100_000, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _tiff_bomb(side: int) -> Callable[[Path], bytes]:
    """A tiled TIFF whose tags declare side×side pixels over one real 16×16 tile."""
    return lambda folder: _tiff_bomb_bytes(side)


def _tiff_bomb_bytes(side: int) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((16, 16), np.uint8), tile=(16, 16), compression="zlib")
    data = bytearray(buf.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tags = tif.pages[0].tags
        for code in (256, 257):  # ImageWidth, ImageLength
            tag = tags[code]
            fmt = "<I" if tag.dtype in (4, tifffile.DATATYPE.LONG) else "<H"
            if fmt == "<H":  # make room: the value field holds 4 bytes, switch the type to LONG
                struct.pack_into("<H", data, tag.offset + 2, 4)
            struct.pack_into("<I", data, tag.valueoffset, side)
    return bytes(data)


def _cmyk_jpeg(folder: Path) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(base_rgb()).convert("CMYK").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _truncated_jpeg(folder: Path) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(base_rgb()).save(buf, format="JPEG", quality=95)
    return buf.getvalue()[: len(buf.getvalue()) // 3]


def _corrupt_png(folder: Path) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(base_rgb()).save(buf, format="PNG")
    return buf.getvalue()[:40] + b"\x00garbage" * 64


def _pyramid(folder: Path) -> bytes:
    buf = io.BytesIO()
    base = np.repeat(np.repeat(base_rgb(), 4, 0), 4, 1)  # 384×512
    with tifffile.TiffWriter(buf) as tw:
        for i, f in enumerate((1, 2, 4)):
            kw = {"subifds": 2} if i == 0 else {"subfiletype": 1}
            tw.write(base[::f, ::f], photometric="rgb", tile=(64, 64), compression="zlib", **kw)
    return buf.getvalue()


def _h5ad_bytes(folder: Path) -> bytes:
    return good_cells(folder).read_bytes()


# ------------------------------------------------------------------------------------- checks


def _is_rgb_like_base(img: Any) -> None:
    assert img.pixels.shape == (96, 128, 3), img.pixels.shape
    np.testing.assert_allclose(img.pixels, base_rgb() / 255.0, atol=0.02)


def _gray(shape: tuple[int, int]) -> Callable[[Any], None]:
    def check(img: Any) -> None:
        assert img.pixels.shape == (*shape, 1) and img.is_gray

    return check


def _rgba_check(img: Any) -> None:
    assert img.pixels.shape == (96, 128, 3)
    np.testing.assert_allclose(img.pixels[:, :32], 1.0)  # transparent columns composite on white
    np.testing.assert_allclose(img.pixels[:, 64:], base_rgb()[:, 64:] / 255.0, atol=1e-6)


def _u16_check(img: Any) -> None:
    want = _U16.astype(np.float64) / 65535.0
    np.testing.assert_allclose(img.pixels[..., 0], want, atol=1e-6)


def _float_check(img: Any) -> None:
    px = img.pixels[..., 0]
    assert np.isfinite(px).all() and px.min() == 0.0 and px.max() == 1.0  # min–max rescaled, NaN → 0


def _cmyk_check(img: Any) -> None:
    assert img.pixels.shape == (96, 128, 3)  # converted to RGB: the same colours as the RGB original
    assert np.abs(img.pixels - base_rgb() / 255.0).mean() < 0.03


def _multipage_check(img: Any) -> None:
    np.testing.assert_allclose(img.pixels[..., 0], _STACK[0] / 255.0, atol=1e-6)  # the first page


def _pyramid_check(img: Any) -> None:
    assert img.full_shape == (384, 512)
    assert img.pixels.shape[2] == 3 and max(img.pixels.shape[:2]) <= 512


def _sparse_check(a: Any) -> None:
    assert sparse.issparse(a.X) and a.n_obs == N_CELLS


def _dense_check(a: Any) -> None:
    assert isinstance(a.X, np.ndarray) and a.n_obs == N_CELLS


_U16 = (np.linspace(0, 65535, 96 * 128).reshape(96, 128)).astype(np.uint16)
_STACK = np.stack([base_rgb()[..., 0], 255 - base_rgb()[..., 0], base_rgb()[..., 1]])
_RGBA = np.dstack([base_rgb(), np.where(np.arange(128) < 32, 0, 255)[None, :].repeat(96, 0).astype(np.uint8)])
_FLOAT = (base_rgb()[..., 1].astype(np.float32) * 3.7 - 100.0)
_FLOAT[0, 0] = np.nan
_5CH = np.stack([base_rgb()[..., 0]] * 5).astype(np.uint16)

C, I = "cells", "image"
CASES: list[Case] = [
    # --- cells: files that are not (readable) AnnData
    Case("cells_empty_file", C, _raw("empty.h5ad", lambda f: b""), r"empty \(0 bytes\)"),
    Case("cells_csv_text", C, _raw("cells.h5ad", lambda f: b"cell,x,y\n1,2.5,3.5\n" * 20),
         r"not an AnnData \.h5ad file.*looks like text.*write_h5ad"),
    Case("cells_png_bytes", C, _raw("cells.h5ad", lambda f: good_image(f).read_bytes()),
         r"not an AnnData \.h5ad file.*binary data"),
    Case("cells_truncated_h5ad", C, _raw("cut.h5ad", _truncated_h5ad), r"truncated or damaged.*again"),
    Case("cells_plain_hdf5", C, _raw("plain.h5ad", _plain_hdf5), r"HDF5 but not.*AnnData|no cells"),
    # --- cells: coordinates
    Case("cells_zero_cells", C, _cells("none", lambda a: a[:0].copy()), r"no cells"),
    Case("cells_no_spatial", C, _cells("nospatial", _no_spatial),
         r"no obsm\['spatial'\].*obsm is empty.*Store them as adata.obsm\['spatial'\] = xy"),
    Case("cells_spatial_in_obs", C, _cells("inobs", _spatial_in_obs),
         r"no obsm\['spatial'\].*obs has \['x_centroid', 'y_centroid'\]"),
    Case("cells_1d_coordinates", C, _raw("oned.h5ad", _one_d_spatial), r"shape \(400, 1\).*\(n_cells, 2\).*one column"),
    Case("cells_3_columns", C, _cells("xyz", _set_spatial(lambda xy: np.c_[xy, np.zeros(len(xy))])),
         r"3 columns.*\[:, :2\]"),
    Case("cells_nan_coordinates", C, _cells("nan", _set_spatial(lambda xy: _put(xy, (5, 0), np.nan))),
         r"1 of 400 rows with NaN or inf"),
    Case("cells_inf_coordinates", C, _cells("inf", _set_spatial(lambda xy: _put(xy, slice(0, 3), np.inf))),
         r"3 of 400 rows with NaN or inf"),
    Case("cells_text_coordinates", C, _cells("strxy", _string_coords), r"not numeric"),
    Case("cells_single_cell", C, _cells("one", lambda a: a[:1].copy()), r"a single cell.*at least 10"),
    Case("cells_one_position", C, _cells("stack", _set_spatial(lambda xy: xy * 0 + 7.0)),
         r"400 cells at 1 distinct position.*at least 10"),
    Case("cells_nanometres", C, _cells("nm", _set_spatial(lambda xy: xy * 1000)),
         r"apart.*must be in µm.*divide by 1000"),
    Case("cells_millimetres", C, _cells("mm", _set_spatial(lambda xy: xy / 1000)),
         r"apart.*must be in µm.*in mm multiply by 1000"),
    Case("cells_space_ranger_pixels", C, _cells("sr_px", _space_ranger(True)), "ok",
         warn=r"Space Ranger's full-resolution image pixels.*obsm\['spatial'\] \* 0\.2738,"),
    Case("cells_space_ranger_um", C, _cells("sr_um", _space_ranger(False)), "ok"),
    Case("cells_odd_uns_spatial", C, _cells("odd_uns", _odd_uns_spatial), "ok"),
    Case("cells_duplicated", C, _cells("dup", _duplicated), "ok", warn=r"100 of 500 cells repeat",
         check=lambda a: a.n_obs == 500),
    Case("cells_duplicate_names", C, _cells("dupnames", _dup_names), "ok", warn=r"cell names.*repeated"),
    # --- cells: counts
    Case("cells_sparse_X", C, _cells("sparse", lambda a: None), "ok", check=_sparse_check),
    Case("cells_dense_X", C, _cells("dense", lambda a: None, dense=True), "ok", check=_dense_check),
    Case("cells_all_zero_counts", C, _cells("zeros", _zero_counts), "ok", warn=r"zero counts.*using 'cell density'"),
    Case("cells_no_genes", C, _cells("nogenes", _no_genes), "ok", warn=r"no genes.*using 'cell density'"),
    Case("cells_negative_X", C, _cells("neg", _negative), r"negative values.*raw counts.*'cell density'"),
    Case("cells_nan_in_X", C, _cells("nanx", _nan_x), r"1 NaN or inf values.*'cell density'"),
    Case("cells_unknown_gene", C, _cells("gene", lambda a: None), r"'Gfapp'.*close matches: \['Gfap'\]",
         signal="Gfapp", app=False),
    # --- images that cannot be used
    Case("image_empty_file", I, _raw("empty.png", lambda f: b""), r"empty \(0 bytes\)"),
    Case("image_text", I, _raw("notes.png", lambda f: b"hello, I am a text file\n" * 10),
         r"not a readable image.*export the image again as PNG, JPEG or TIFF"),
    Case("image_corrupt_png", I, _raw("corrupt.png", _corrupt_png), r"corrupt|truncated|cannot read"),
    Case("image_truncated_jpeg", I, _raw("cut.jpg", _truncated_jpeg), r"corrupt or truncated.*export it again"),
    Case("image_1x1", I, _raw("one.png", _png(np.zeros((1, 1, 3), np.uint8))), r"1×1 pixels.*at least 8"),
    Case("image_png_bomb", I, _raw("bomb.png", _png_bomb), r"60000×60000.*safety limit.*pyramidal TIFF"),
    Case("image_tiff_bomb_40gp", I, _raw("bomb.tif", _tiff_bomb(200_000)),
         r"200000×200000 = 40.0 gigapixels.*decompression bomb.*again"),
    Case("image_tiff_bomb_1gp", I, _raw("bomb1.tif", _tiff_bomb(32_000)),
         r"32000×32000 pixels but holds data for only 1 of its 4000000 tiles.*again"),
    Case("image_h5ad_as_image", I, _raw("cells.tif", _h5ad_bytes), r"HDF5 file.*cells file"),
    Case("image_blank", I, _raw("white.png", _png(np.full((64, 64, 3), 255, np.uint8))), r"blank.*again"),
    Case("image_5_channels", I, _raw("stack.tif", _tiff(_5CH, metadata={"axes": "CYX"})),
         r"5 channels; save the one to align against.*channel=<0..4>"),
    # --- images that are legitimate
    Case("image_rgb_png", I, _raw("rgb.png", _png(base_rgb())), "ok", check=_is_rgb_like_base),
    Case("image_grayscale_png", I, _raw("gray.png", _png(base_rgb()[..., 0])), "ok", check=_gray((96, 128))),
    Case("image_rgba_png", I, _raw("rgba.png", _png(_RGBA, "RGBA")), "ok", check=_rgba_check),
    Case("image_16bit_png", I, _raw("g16.png", _png(_U16)), "ok", check=_u16_check),
    Case("image_16bit_tiff", I, _raw("g16.tif", _tiff(_U16)), "ok", check=_u16_check),
    Case("image_float_tiff", I, _raw("f32.tif", _tiff(_FLOAT)), "ok", check=_float_check),
    Case("image_cmyk_jpeg", I, _raw("cmyk.jpg", _cmyk_jpeg), "ok", check=_cmyk_check),
    Case("image_multipage_tiff", I, _raw("pages.tif", _tiff(_STACK, photometric="minisblack")), "ok",
         warn=r"stack of 3 planes; using plane 0",
         check=_multipage_check),
    Case("image_pyramidal_tiff", I, _raw("pyramid.tif", _pyramid), "ok", check=_pyramid_check),
]

CASE_IDS = [c.name for c in CASES]


def build_pair(case: Case, folder: Path) -> tuple[Path, Path]:
    """Write the case's file and its good partner into ``folder``; returns ``(cells, image)`` paths."""
    folder.mkdir(parents=True, exist_ok=True)
    made = case.build(folder)
    if case.kind == C:
        return made, good_image(folder)
    return good_cells(folder), made
