"""The aligned .h5ad plots with scanpy / squidpy on the H&E as it is (uns['spatial']), and the cells CSV.

The section is synthetic with a known map: a white image with a dark disc at every cell's true pixel
position, cells in µm through a rotated, scaled, shifted affine. Each plot is rendered twice with the same
axes — the image alone (cells transparent), then the cells alone in red (image transparent) — and the red
pixels must fall on the dark discs: they do only when the image, its scale factor and ``spatial_he`` agree.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import anndata as ad
import cv2
import numpy as np
import pandas as pd
import pytest

from gala_engine import constants
from gala_engine.exports import (
    CONFIDENCE_KEY,
    HIRES_MAX_SIDE,
    LIBRARY_ID,
    LOWRES_MAX_SIDE,
    add_spatial_image,
    cells_csv_text,
    downsample,
    write_aligned_h5ad,
    write_cells_csv,
)
from gala_engine.io import read_image, write_h5ad_atomic
from gala_engine.manual import affine_result
from gala_engine.section import aligned_adata

SPACING_PX = 90.0  # between neighbouring cells on the image
DISC_RADIUS = 0.35 * SPACING_PX  # the dark disc drawn at each cell (the plots draw dots of 0.5 × spacing)
INVISIBLE = (0.0, 0.0, 0.0, 0.0)  # the cells' colour in the image-only render


def _section(folder: Path, *, shape=(2300, 2700), max_side: int | None = None):
    """(aligned AnnData with the image for plotting, the image as loaded, its PNG path)."""
    h, w = shape
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(150.0, w - 150, SPACING_PX), np.arange(150.0, h - 150, SPACING_PX))
    xy_px = np.c_[xs.ravel(), ys.ravel()] + rng.uniform(-5, 5, (xs.size, 2))
    xy_px = xy_px[rng.permutation(len(xy_px))[:180]]
    pixels = np.full((h, w, 3), 255, np.uint8)
    for x, y in xy_px:
        cv2.circle(pixels, (int(round(x * 16)), int(round(y * 16))), int(DISC_RADIUS * 16), (40, 20, 90), -1,
                   lineType=cv2.LINE_AA, shift=4)
    path = folder / "he.png"
    cv2.imwrite(str(path), pixels[:, :, ::-1])
    t = math.radians(25.0)  # image px (row, col) → µm (row, col): rotation, 0.8 µm/px, shift
    A = np.array([[0.8 * math.cos(t), -0.8 * math.sin(t), 300.0], [0.8 * math.sin(t), 0.8 * math.cos(t), -120.0],
                  [0.0, 0.0, 1.0]])
    yx_um = xy_px[:, ::-1] @ A[:2, :2].T + A[:2, 2]
    cells = ad.AnnData(X=np.ones((len(xy_px), 3), np.float32), obsm={"spatial": yx_um[:, ::-1].copy()})
    cells.obs_names = [f"cell{i}" for i in range(cells.n_obs)]
    image = read_image(path, max_side=max_side)
    aligned = aligned_adata(cells, affine_result(A, image_shape=image.full_shape))
    np.testing.assert_allclose(aligned.obsm[constants.ALIGNED_KEY], xy_px, atol=1e-6)
    assert add_spatial_image(aligned, image, A) == []
    out = folder / "aligned.h5ad"
    write_aligned_h5ad(aligned, out)  # through the file, as users get it
    return ad.read_h5ad(out), image, path


def _canvas(draw) -> np.ndarray:
    """RGB pixels of the figure ``draw()`` makes (matplotlib Agg), closed afterwards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    draw(ax)
    ax.set_axis_off()
    ax.set_title("")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)  # saved, as a user would, then read back
    plt.close(fig)
    return cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def _red_on_discs(image_only: np.ndarray, cells_only: np.ndarray) -> float:
    """Share of the cells' red pixels (second render) that lie on the image's dark discs (first render)."""
    assert image_only.shape == cells_only.shape
    r, g, b = (cells_only[:, :, i].astype(int) for i in range(3))
    red = (r > 180) & (g < 90) & (b < 90)
    assert red.sum() > 500, "the cells were not drawn"
    dark = (image_only < 170).all(axis=2)  # the discs (RGB 90, 20, 40); not white, not red
    return float(dark[red].mean())


def _scanpy(adata):
    import scanpy as sc

    def render(cells: str | tuple, img_alpha: float):
        return _canvas(lambda ax: sc.pl.spatial(adata, basis=constants.ALIGNED_KEY, img_key="hires",
                                                library_id=LIBRARY_ID, na_color=cells, size=0.5, alpha_img=img_alpha,
                                                ax=ax, show=False, colorbar_loc=None))

    return _red_on_discs(render(INVISIBLE, 1.0), render("red", 0.0))


def _squidpy(adata):
    import squidpy as sq

    def render(cells: str | tuple, img_alpha: float):
        return _canvas(lambda ax: sq.pl.spatial_scatter(adata, spatial_key=constants.ALIGNED_KEY, img_res_key="hires",
                                                        library_id=LIBRARY_ID, shape="circle", na_color=cells,
                                                        size=0.5, img_alpha=img_alpha, ax=ax, colorbar=False,
                                                        frameon=False))

    return _red_on_discs(render(INVISIBLE, 1.0), render("red", 0.0))


@pytest.fixture(scope="module")
def section(tmp_path_factory):
    return _section(tmp_path_factory.mktemp("exports"))


def test_layout_sizes_and_scalefactors(section) -> None:
    adata, image, _ = section
    lib = adata.uns["spatial"][LIBRARY_ID]
    hires, lowres = lib["images"]["hires"], lib["images"]["lowres"]
    sf = lib["scalefactors"]
    assert hires.dtype == np.uint8 and hires.shape[2] == 3 and max(hires.shape[:2]) == HIRES_MAX_SIDE
    assert max(lowres.shape[:2]) == LOWRES_MAX_SIDE
    h, w = image.full_shape
    assert sf["tissue_hires_scalef"] == pytest.approx(HIRES_MAX_SIDE / max(h, w))
    assert sf["tissue_lowres_scalef"] == pytest.approx(LOWRES_MAX_SIDE / max(h, w))
    assert hires.shape[:2] == (round(h * sf["tissue_hires_scalef"]), round(w * sf["tissue_hires_scalef"]))
    assert sf["spot_diameter_fullres"] == pytest.approx(SPACING_PX, rel=0.15)  # nearest-neighbour spacing in px
    # each cell's hires pixel is dark (its disc), the image's background white
    xy = np.rint(adata.obsm[constants.ALIGNED_KEY] * sf["tissue_hires_scalef"]).astype(int)
    assert hires[xy[:, 1], xy[:, 0]].mean() < 120 and hires[5, 5].min() == 255


@pytest.mark.parametrize("plot", [_scanpy, _squidpy], ids=["scanpy", "squidpy"])
def test_cells_fall_on_the_image(section, plot) -> None:
    adata = section[0]
    assert plot(adata) > 0.9
    # a wrong scale factor (10 %) puts the cells off their discs: the check can fail
    bad = adata.copy()
    for key in ("spatial", constants.ALIGNED_KEY):  # scanpy reads the first, squidpy the second
        bad.uns[key][LIBRARY_ID]["scalefactors"]["tissue_hires_scalef"] *= 0.9
    assert plot(bad) < 0.5


def test_images_stored_once(section, tmp_path: Path) -> None:
    """uns['spatial'] and uns['spatial_he'] hold the same images: one dataset in the file, two names."""
    import h5py

    adata, image, _ = section
    fresh = adata.copy()
    for key in ("spatial", constants.ALIGNED_KEY):
        del fresh.uns[key]
    add_spatial_image(fresh, image, np.eye(3))
    once, twice = tmp_path / "once.h5ad", tmp_path / "twice.h5ad"
    write_aligned_h5ad(fresh, once)
    write_h5ad_atomic(fresh, twice)  # the plain writer stores them twice
    with h5py.File(once, "r") as f:
        for name in ("hires", "lowres"):
            assert f[f"uns/spatial/{LIBRARY_ID}/images/{name}"] == f[f"uns/spatial_he/{LIBRARY_ID}/images/{name}"]
    hires = fresh.uns["spatial"][LIBRARY_ID]["images"]["hires"]
    single, bare = tmp_path / "single.h5ad", tmp_path / "bare.h5ad"  # the images under one key; none
    meta = {constants.UNS_KEY: fresh.uns[constants.UNS_KEY]}
    write_h5ad_atomic(ad.AnnData(fresh.X, obsm=dict(fresh.obsm), uns={"spatial": fresh.uns["spatial"], **meta}), single)
    write_h5ad_atomic(ad.AnnData(fresh.X, obsm=dict(fresh.obsm), uns=meta), bare)
    size = {p.stem: p.stat().st_size for p in (once, twice, single, bare)}
    images = size["single"] - size["bare"]
    assert images > 50_000 and size["twice"] - size["single"] > 0.8 * images  # the plain writer: twice
    assert size["once"] - size["single"] < 0.1 * images  # hard links: once
    back = ad.read_h5ad(once)
    for key in ("spatial", constants.ALIGNED_KEY):
        np.testing.assert_array_equal(back.uns[key][LIBRARY_ID]["images"]["hires"], hires)
    assert fresh.uns[constants.ALIGNED_KEY][LIBRARY_ID]["images"]["hires"] is hires  # the caller's object restored
    assert not list(tmp_path.glob(".*.tmp"))


def test_downsampled_image_and_existing_library(tmp_path: Path) -> None:
    # an image loaded at a third of its size: hires is never finer than that; the scanpy plot still agrees
    adata, image, _ = _section(tmp_path, shape=(1500, 1800), max_side=600)
    assert image.scale == 3.0
    sf = adata.uns["spatial"][LIBRARY_ID]["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(1 / 3)
    assert _scanpy(adata) > 0.9
    # an input's own Visium library is kept; GALA's sits beside it
    visium = {"images": {"hires": np.zeros((4, 4, 3), np.uint8)}, "scalefactors": {"tissue_hires_scalef": 0.1}}
    adata.uns["spatial"] = {"V1_section": visium}
    del adata.uns[constants.ALIGNED_KEY]
    assert add_spatial_image(adata, image, np.eye(3)) == []
    assert set(adata.uns["spatial"]) == {"V1_section", LIBRARY_ID}
    assert set(adata.uns[constants.ALIGNED_KEY]) == {LIBRARY_ID}
    assert adata.uns["spatial"]["V1_section"]["scalefactors"]["tissue_hires_scalef"] == 0.1
    adata.uns["spatial"] = "not a mapping"
    assert "was kept as it is" in add_spatial_image(adata, image, np.eye(3))[0]
    assert adata.uns["spatial"] == "not a mapping"


def test_downsample_grey_and_small() -> None:
    from gala_engine.io import LoadedImage

    grey = LoadedImage(np.linspace(0, 1, 50 * 40, dtype=np.float32).reshape(50, 40, 1), 1.0, (50, 40), "dapi.png")
    out, s = downsample(grey, 2000)
    assert s == 1.0 and out.shape == (50, 40, 3) and (out[:, :, 0] == out[:, :, 2]).all()
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_cells_csv(section, tmp_path: Path) -> None:
    adata = section[0]
    frame = pd.read_csv(io.StringIO(cells_csv_text(adata)))
    assert list(frame.columns) == ["cell_id", "x_um", "y_um", "x_px", "y_px"]
    assert frame["cell_id"].tolist() == list(adata.obs_names)
    np.testing.assert_allclose(frame[["x_um", "y_um"]], adata.obsm[constants.SPATIAL_KEY], atol=1e-5)
    np.testing.assert_allclose(frame[["x_px", "y_px"]], adata.obsm[constants.ALIGNED_KEY], atol=1e-5)
    adata = adata.copy()
    adata.obs[CONFIDENCE_KEY] = np.linspace(0, 1, adata.n_obs)
    out = write_cells_csv(adata, tmp_path / "cells.csv", protect=[tmp_path / "other.h5ad"])
    frame = pd.read_csv(out)
    assert list(frame.columns)[-1] == "confidence" and frame["confidence"].notna().all()
    np.testing.assert_allclose(frame["confidence"], adata.obs[CONFIDENCE_KEY], atol=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))
    adata.obs.loc[adata.obs_names[0], CONFIDENCE_KEY] = np.nan  # incomplete: no column rather than empty cells
    assert "confidence" not in cells_csv_text(adata).splitlines()[0]
    with pytest.raises(ValueError, match="input"):
        write_cells_csv(adata, out, protect=[out])
