"""Target signals (gala_engine.signals): gene lists and principal components as channels, the combined target
raster, the informativeness score and its "too flat to align" warning."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from gala_engine import AlignParams, constants
from gala_engine.checks import check_cells
from gala_engine.demo import load_demo, truth_px_xy
from gala_engine.errors import GalaInputError
from gala_engine.io import LoadedImage, cell_signal, read_image
from gala_engine.section import align_section, median_error_px, prepare_section
from gala_engine.signals import (
    FLAT_LEVEL,
    SignalSpec,
    flat_warning,
    parse_signal,
    pca_scores,
    rank_signals,
    signal_channels,
    signal_warning,
)


def _gradient_cells(n_side: int = 24, n_genes: int = 40, seed: int = 0) -> ad.AnnData:
    """Cells on a 15 µm grid whose expression follows one known spatial gradient (along x): half the genes rise
    with x, half fall, the rising ones more strongly (so total counts rise with x too)."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(n_side) * 15.0, np.arange(n_side) * 15.0)
    xy = np.stack([xs.ravel(), ys.ravel()], 1)
    t = xy[:, 0] / xy[:, 0].max()  # 0 → 1 left to right
    up = 2.0 + 30.0 * t[:, None] * np.ones((1, n_genes // 2))
    down = 2.0 + 15.0 * (1.0 - t)[:, None] * np.ones((1, n_genes - n_genes // 2))
    X = rng.poisson(np.hstack([up, down])).astype(np.float32)
    adata = ad.AnnData(X=sparse.csr_matrix(X), obsm={constants.SPATIAL_KEY: xy})
    adata.var_names = [f"G{k}" for k in range(n_genes)]
    return adata


def _image_for(adata: ad.AnnData) -> LoadedImage:
    """A plain grey image (only the cell raster is under test)."""
    rng = np.random.default_rng(1)
    return LoadedImage(pixels=rng.uniform(0, 1, (120, 120, 1)).astype(np.float32), scale=1.0, full_shape=(120, 120),
                       source="test")


# ----------------------------------------------------------------------------------------------- parsing


def test_parse_signal_lists_pca_and_errors() -> None:
    assert parse_signal("total counts") == SignalSpec("total")
    assert parse_signal("cell density") == SignalSpec("density")
    assert parse_signal("EPCAM, KRT8") == SignalSpec("genes", ("EPCAM", "KRT8"))
    assert parse_signal("Slc17a7") == SignalSpec("genes", ("Slc17a7",))
    assert parse_signal("pca") == SignalSpec("pca", n_pcs=3)
    assert parse_signal("PCA:5") == SignalSpec("pca", n_pcs=5)
    assert parse_signal("pca", var_names=["pca", "B"]) == SignalSpec("genes", ("pca",))  # a gene called pca
    for bad, words in (("pca:0", "1–20"), ("pca:21", "1–20"), ("A,,B", "empty gene"), ("A,B,A", "more than once"),
                       ("  ", "empty")):
        with pytest.raises(GalaInputError, match=words):
            parse_signal(bad)


def test_unknown_genes_in_a_list_are_all_named_with_close_matches() -> None:
    adata = load_demo("merfish_mini").adata
    with pytest.raises(GalaInputError) as err:
        signal_channels(adata, "Slc17a7,Gfapp,slc17a7x")
    msg = str(err.value)
    assert "2 of 3 genes" in msg and "'Gfapp' (close matches: ['Gfap'" in msg and "'slc17a7x'" in msg
    with pytest.raises(GalaInputError, match="close matches"):
        check_cells(adata, signal="Gfapp,Slc17a7")


# ------------------------------------------------------------------------------------- channels → rasters


def test_gene_list_channels_are_the_genes_columns_and_the_target_their_equal_mix() -> None:
    adata = load_demo("merfish_mini").adata
    weights, names = signal_channels(adata, "Slc17a7,Gfap")
    assert names == ["Slc17a7", "Gfap"] and weights.shape == (adata.n_obs, 2)
    np.testing.assert_array_equal(weights[:, 1], cell_signal(adata, "Gfap"))
    image = read_image(load_demo("merfish_mini").image_path, max_side=600)
    r = prepare_section(adata, image, signal="Slc17a7,Gfap", fine_levels=0)
    singles = [prepare_section(adata, image, signal=g, fine_levels=0, dx=r.dx).J[0] for g in ("Slc17a7", "Gfap")]
    expected = sum(s / s.max() for s in singles) / 2.0  # each gene's raster scaled to max 1, equal weights
    np.testing.assert_allclose(r.J[0], expected, rtol=1e-4, atol=1e-6)
    assert r.channels.names == ["Slc17a7", "Gfap"] and r.channels.channels.shape[0] == 2


def test_pca_channel_of_a_known_gradient() -> None:
    adata = _gradient_cells()
    x = np.asarray(adata.obsm[constants.SPATIAL_KEY])[:, 0]
    pc = pca_scores(adata, 2)
    assert np.corrcoef(pc[:, 0], x)[0, 1] > 0.95  # PC1 is the gradient, signed like the total counts
    weights, names = signal_channels(adata, "pca:1")
    assert names == ["PC1+", "PC1−"] and weights.min() == 0.0  # the two signs as raster weights ≥ 0
    assert np.corrcoef(weights[:, 0], x)[0, 1] > 0.8 and np.corrcoef(weights[:, 1], x)[0, 1] < -0.8
    assert np.all(weights.min(1) == 0.0)  # each cell lies on one side
    r = prepare_section(adata, _image_for(adata), signal="pca:1", fine_levels=0)
    rows, cols = r.xJ
    keep_r = (rows > 40) & (rows < rows.max() - 60)  # the cells span 0–345 µm: away from the blurred edge
    keep_c = (cols > 40) & (cols < cols.max() - 60)
    plus, minus = (r.channels.channels[k][np.ix_(keep_r, keep_c)].mean(0) for k in (0, 1))
    c, mid = cols[keep_c], cols[keep_c].mean()
    assert plus[c > mid].sum() > 4 * plus[c < mid].sum() and plus[-1] > 5 * plus[0]  # PC1+: the right side
    assert minus[c < mid].sum() > 4 * minus[c > mid].sum() and minus[0] > 5 * minus[-1]  # PC1−: the left side
    assert np.corrcoef(plus - minus, c)[0, 1] > 0.95  # together: the gradient
    np.testing.assert_allclose(r.J[0], (r.channels.channels[0] / r.channels.channels[0].max()
                                        + r.channels.channels[1] / r.channels.channels[1].max()) / 2, rtol=1e-6)
    dens = prepare_section(adata, _image_for(adata), signal=constants.SIGNAL_DENSITY, fine_levels=0)
    assert r.informativeness > 0.3 > FLAT_LEVEL > dens.informativeness  # an even grid: density is flat


def test_pca_refuses_more_components_than_the_data_have() -> None:
    adata = _gradient_cells(n_side=4, n_genes=3)
    with pytest.raises(GalaInputError, match="pca:2 or fewer"):
        signal_channels(adata, "pca:5")


# --------------------------------------------------------------------------------------------- flatness


def _with_const_and_noise(adata: ad.AnnData) -> ad.AnnData:
    rng = np.random.default_rng(0)
    X = sparse.hstack([sparse.csr_matrix(adata.X), np.full((adata.n_obs, 1), 3.0),
                       rng.poisson(3, (adata.n_obs, 1)).astype(float)]).tocsr()
    out = ad.AnnData(X=X, obsm={constants.SPATIAL_KEY: np.asarray(adata.obsm[constants.SPATIAL_KEY])})
    out.var_names = [str(v) for v in adata.var_names] + ["CONST", "NOISE"]
    return out


def test_flatness_ranks_a_constant_gene_below_an_informative_one_and_warns() -> None:
    adata = _with_const_and_noise(load_demo("visium_dg").adata)  # an evenly packed grid of spots
    ranked = {s.signal: s for s in rank_signals(adata, ["CONST", "NOISE", "Prkcd", "total counts", "pca"])}
    assert ranked["CONST"].score < FLAT_LEVEL < ranked["total counts"].score < ranked["Prkcd"].score
    assert ranked["NOISE"].score < FLAT_LEVEL  # noise averages out at the search's scale
    assert ranked["pca"].score > FLAT_LEVEL
    image = read_image(load_demo("visium_dg").image_path)
    r = prepare_section(adata, image, signal="CONST", fine_levels=0)
    msg = signal_warning(adata, r)
    # suggested: total counts (it places these spots: 1.4 px with the default search, bench/signals.py --align)
    assert msg is not None and "too flat to align" in msg and "Try the signal 'total counts'" in msg
    assert signal_warning(adata, prepare_section(adata, image, signal="Prkcd", fine_levels=0)) is None
    assert flat_warning("x", FLAT_LEVEL + 0.01) is None


# -------------------------------------------------------------------------------------------- alignment


def _moved(adata: ad.AnnData, angle: float = 130.0) -> ad.AnnData:
    xy = np.asarray(adata.obsm[constants.SPATIAL_KEY], dtype=np.float64)
    t = np.deg2rad(angle)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ np.diag([-1.0, 1.0])
    out = adata.copy()
    out.obsm[constants.SPATIAL_KEY] = (xy - xy.mean(0)) @ R.T + xy.mean(0) + np.array([250.0, -400.0])
    return out


def test_alignment_with_a_pca_signal_recovers_the_known_transform() -> None:
    demo = load_demo("merfish_mini")
    adata = _moved(demo.adata)
    image = read_image(demo.image_path)
    params = AlignParams(num_generations=20, ga_restarts=1, refine_iterations=60, num_iterations=0)
    px_per_um = float(np.sqrt(abs(np.linalg.det(demo.um_to_px[:, :2]))))
    errors = {}
    for signal in (constants.SIGNAL_TOTAL_COUNTS, "pca"):
        result = align_section(prepare_section(adata, image, signal=signal), params)
        xy = result.cells_to_image(np.asarray(adata.obsm[constants.SPATIAL_KEY]), deformed=False)
        errors[signal] = median_error_px(xy, truth_px_xy(demo)) / px_per_um
    assert errors["pca"] < max(2.0 * errors[constants.SIGNAL_TOTAL_COUNTS], 2.0), errors  # µm; a nucleus ~10
