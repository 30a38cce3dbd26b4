"""Large inputs stay within bounded memory: a big tiled TIFF is read band by band (never a full float
copy), and many cells are checked and rasterised. Memory is measured with tracemalloc (numpy's
allocations are traced); nothing here asserts a time."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from gala_engine.checks import check_cells
from gala_engine.io import read_image
from gala_engine.raster import choose_dx, rasterize

SIDE = 6000
TILE = 256


def _pattern(y0: int, x0: int, h: int, w: int, step: int = 1) -> np.ndarray:
    y = (y0 + step * np.arange(h))[:, None]
    x = (x0 + step * np.arange(w))[None, :]
    v = ((x // 37 + y // 53) % 7) * 30 + (x * 3 + y) % 17
    return np.stack([v, 255 - v, (v * 2) % 256], -1).astype(np.uint8)


def _tiles(side: int, step: int):
    n = -(-side // step)
    for ty in range(0, n, TILE):
        for tx in range(0, n, TILE):
            tile = np.zeros((TILE, TILE, 3), np.uint8)
            h, w = min(TILE, n - ty), min(TILE, n - tx)
            tile[:h, :w] = _pattern(ty * step, tx * step, h, w, step)
            yield tile


@pytest.fixture(scope="module")
def big_tiffs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """6000×6000 RGB tiled zlib TIFFs (108 MB of pixels), single-level and with ÷2, ÷4 SubIFD levels,
    written tile by tile (the writer never holds the image)."""
    d = tmp_path_factory.mktemp("big")
    out = {}
    for name, steps in (("flat", (1,)), ("pyramid", (1, 2, 4))):
        path = d / f"{name}.tif"
        with tifffile.TiffWriter(path) as tw:
            for i, step in enumerate(steps):
                n = -(-SIDE // step)
                kw = {"subifds": len(steps) - 1} if (i == 0 and len(steps) > 1) else ({"subfiletype": 1} if i else {})
                tw.write(_tiles(SIDE, step), shape=(n, n, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                         compression="zlib", compressionargs={"level": 1}, **kw)
        out[name] = path
    return out


def _traced(fn):
    tracemalloc.start()
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("name", ["flat", "pyramid"])
def test_big_tiff_is_read_without_a_full_float_copy(big_tiffs: dict[str, Path], name: str) -> None:
    full_f64 = SIDE * SIDE * 3 * 8  # 864 MB
    img, peak = _traced(lambda: read_image(big_tiffs[name], max_side=1000))
    # flat: 6000 ÷ 6; pyramid: the smallest level ≥ 1000 px is 1500 (÷4), then ÷2
    scale, side = (6.0, 1000) if name == "flat" else (8.0, 750)
    assert img.full_shape == (SIDE, SIDE) and img.scale == scale and img.pixels.shape == (side, side, 3)
    limit = full_f64 / 5 if name == "flat" else full_f64 / 10  # the pyramid reads a level 16× smaller
    assert peak < limit, f"peak {peak / 2**20:.0f} MB"
    # area averages of the right blocks (the pyramid's ÷4 level holds every 4th pixel: 2×2 of those)
    for r, c in ((0, 0), (517, 233), (side - 1, side - 1)):
        if name == "flat":
            want = _pattern(6 * r, 6 * c, 6, 6).reshape(-1, 3).mean(0) / 255.0
        else:
            want = _pattern(8 * r, 8 * c, 2, 2, step=4).reshape(-1, 3).mean(0) / 255.0
        np.testing.assert_allclose(img.pixels[r, c], want, atol=1e-5)


def test_300k_cells_are_checked_and_rasterised_in_bounded_memory() -> None:
    import anndata as ad
    from scipy import sparse

    n = 300_000
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10_000, (n, 2))
    adata = ad.AnnData(sparse.csr_matrix((n, 3), dtype=np.float32))
    adata.X = sparse.random(n, 3, density=0.5, format="csr", random_state=0, dtype=np.float32)
    adata.obsm["spatial"] = xy

    def work():
        found = check_cells(adata)
        dx = choose_dx(xy[:, 1], xy[:, 0])
        return found, dx, rasterize(xy[:, 1], xy[:, 0], dx=dx)

    (found, dx, (X, Y, J)), peak = _traced(work)
    assert found.n_cells == n and found.n_positions == n and 5 < found.spacing_um < 20
    assert J.shape == (1, len(Y), len(X)) and J.sum() == pytest.approx(n, rel=1e-6)
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MB"  # inputs alone are 2.4 MB per float64 column
