"""gala() end to end on synthetic pairs with a KNOWN transform, made from the real DAPI image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gala_engine import GalaInputError, gala, to_cpu, transform_points_target_to_source
from gala_engine.lddmm import ESTEP_START
from gala_engine.section import AlignmentResult

from .synth import make_pair, median_error_target_px

FAST = dict(num_iterations=0)  # the defaults of the global search


def _error(pair, result, *, deformed=True):
    r = to_cpu(result)
    v = r["v"] if deformed else 0 * r["v"]
    return median_error_target_px(pair, transform_points_target_to_source(r["xv"], v, r["A"], pair.cells_um))


@pytest.mark.parametrize(
    "angle, sy, sx",
    [(0, 1.0, 1.0), (90, 0.5, 0.5), (180, 2.0, 2.0), (270, 1.0, -1.0), (37, 0.8, -0.6), (-123, 0.75, 1.05)],
    ids=["0deg", "90deg-shrink", "180deg-grow", "270deg-flip", "37deg-flip-aniso", "-123deg-aniso"],
)
def test_known_transform_is_recovered_within_one_target_pixel(dapi_small, angle, sy, sx):
    pair = make_pair(dapi_small, angle, sy, sx)
    result = gala(pair.xI, pair.I, pair.xJ, pair.J, **FAST)
    assert _error(pair, result) < 1.0


@pytest.mark.parametrize("coarse", [1, 2], ids=["full-resolution", "coarse-to-fine"])
def test_lddmm_recovers_a_smooth_warp_within_one_target_pixel(dapi_small, coarse):
    # Cells are drawn where the DAPI is bright, so the intensity feature is the image their density
    # follows; with a Sobel source the truth is not the energy minimum and LDDMM stops near 1.6-1.9 px.
    pair = make_pair(dapi_small, 30, 0.8, 0.8, warp=12.0, kind="intensity")  # ~5 target px of smooth warp
    result = gala(pair.xI, pair.I, pair.xJ, pair.J, num_iterations=200, lddmm_coarse=coarse)
    affine, deformed = _error(pair, result, deformed=False), _error(pair, result)
    assert affine > 1.5  # the warp is real: no affine map removes it
    assert deformed < 1.0 and deformed < 0.5 * affine
    energy = np.array(result["energy_history"])
    # the warp lowered the matching energy left after the first contrast fit (on the first fold, before the E-steps
    # re-weigh it onto another scale)
    assert energy[ESTEP_START - 1, 1] < 0.8 * energy[1, 1]


def test_float32_and_float64_agree(dapi_small):
    pair = make_pair(dapi_small, 60, 0.9, 0.9, n_cells=3000)
    kw = dict(num_iterations=20, num_generations=40, ga_restarts=1)
    r32 = to_cpu(gala(pair.xI, pair.I, pair.xJ, pair.J, dtype="float32", **kw))
    r64 = to_cpu(gala(pair.xI, pair.I, pair.xJ, pair.J, dtype="float64", **kw))
    assert r64["A"].dtype.is_floating_point and str(r64["A"].dtype) == "torch.float64"
    P = pair.cells_um[:200]
    p32 = transform_points_target_to_source(r32["xv"], r32["v"], r32["A"], P)
    p64 = transform_points_target_to_source(r64["xv"], r64["v"], r64["A"], P)
    target_px = np.sqrt(abs(np.linalg.det(pair.A[:2, :2]))) / pair.dx  # target pixels per image pixel
    # the two precisions end their refinements a small fraction of a target pixel apart (each ~0.25 from the truth)
    assert np.median(np.linalg.norm(p32 - p64, axis=1)) * target_px < 0.15


def test_same_seed_gives_the_same_result_on_cpu(dapi_small):
    pair = make_pair(dapi_small, 10, 1.0, 1.0, n_cells=2000)
    kw = dict(num_iterations=10, num_generations=15, ga_restarts=1, device="cpu", random_seed=7)
    a, b = gala(pair.xI, pair.I, pair.xJ, pair.J, **kw), gala(pair.xI, pair.I, pair.xJ, pair.J, **kw)
    assert np.array_equal(a["genes"], b["genes"])
    assert np.array_equal(a["v"].numpy(), b["v"].numpy())
    assert a["ga_history"] == b["ga_history"]


def test_global_numpy_random_state_is_left_alone(dapi_small):
    pair = make_pair(dapi_small, 10, 1.0, 1.0, n_cells=1000)
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    gala(pair.xI, pair.I, pair.xJ, pair.J, num_iterations=0, num_generations=3, ga_restarts=1, refine_iterations=0)
    assert np.random.random() == expected


def test_progress_events_and_stop_keep_the_best_so_far(dapi_small):
    pair = make_pair(dapi_small, 10, 1.0, 1.0, n_cells=1000)
    events = []
    ga_events = lambda: [e for e in events if e.stage == "ga"]  # noqa: E731
    result = gala(pair.xI, pair.I, pair.xJ, pair.J, num_generations=500, num_iterations=100,
                  progress=events.append, should_stop=lambda: len(ga_events()) >= 5)
    assert result["stopped"] is True
    stages = [e.stage for e in events]
    assert stages == ["scan"] * stages.count("scan") + ["ga"] * 5  # the scan reports too, nothing after the stop
    assert [e.step for e in ga_events()] == [1, 2, 3, 4, 5]
    assert ga_events()[-1].value == result["fitness"] and np.allclose(ga_events()[-1].genes, result["genes"])
    assert all(b.value >= a.value for a, b in zip(ga_events(), ga_events()[1:]))  # best so far never drops


def test_small_iteration_counts_work_and_report_energy(dapi_small):
    pair = make_pair(dapi_small, 0, 1.0, 1.0, n_cells=1000)
    events = []
    result = gala(pair.xI, pair.I, pair.xJ, pair.J, num_generations=5, ga_restarts=1, refine_iterations=3,
                  num_iterations=3, lddmm_validate=False, progress=events.append)
    lddmm = [e for e in events if e.stage == "lddmm"]
    assert [e.step for e in lddmm] == [1, 2, 3] and len(result["energy_history"]) == 3
    assert {"matching", "regularisation"} <= set(lddmm[0].extra)
    events.clear()  # cross-validated (default): the two folds share the iterations
    result = gala(pair.xI, pair.I, pair.xJ, pair.J, num_generations=5, ga_restarts=1, refine_iterations=3,
                  num_iterations=4, progress=events.append)
    assert [e.step for e in events if e.stage == "lddmm"] == [1, 2, 1, 2] and len(result["energy_history"]) == 4


def test_result_round_trips_through_npz_without_pickle(dapi_small, tmp_path):
    pair = make_pair(dapi_small, 0, 1.0, 1.0, n_cells=1000)
    raw = gala(pair.xI, pair.I, pair.xJ, pair.J, num_generations=5, ga_restarts=1, num_iterations=5)
    result = AlignmentResult.from_gala(raw, dx=pair.dx)
    back = AlignmentResult.load_npz(result.save_npz(tmp_path / "r.npz"))
    assert np.array_equal(back.A, result.A) and np.array_equal(back.v, result.v)
    assert back.params == result.params and back.energy_history == result.energy_history
    xy = pair.cells_um[:50, ::-1]
    assert np.allclose(back.cells_to_image(xy), result.cells_to_image(xy))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(I=np.zeros((1, 20, 20))), "constant"),
        (dict(I=np.full((1, 20, 20), np.nan)), "NaN"),
        (dict(J=np.ones((1, 1, 0))), "too small"),
        (dict(I=np.ones((2, 3, 4, 5))), r"\(C, H, W\)"),
        (dict(xJ=[np.arange(5.0), np.arange(6.0)]), "axis"),
        (dict(gene_space=[{}] * 3), "list of 5 dicts"),
        (dict(gene_space=[{"low": 10, "high": -10}, {}, {}, {}, {}]), "greater than"),
        (dict(num_generations=0), "num_generations"),
        (dict(bogus=1), "Unknown parameter"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(change, message):
    rng = np.random.default_rng(0)
    args = dict(xI=[np.arange(20.0), np.arange(20.0)], I=rng.random((1, 20, 20)),
                xJ=[np.arange(30.0), np.arange(25.0)], J=rng.random((1, 30, 25)))
    args.update(change)
    with pytest.raises(ValueError, match=message):
        gala(**args)
    assert issubclass(GalaInputError, ValueError)


def test_coarse_to_fine_lddmm_runs_its_first_share_on_pooled_rasters():
    from gala_engine.params import AlignParams
    from gala_engine.pipeline import _lddmm_levels

    rng = np.random.default_rng(0)
    I, J = torch.as_tensor(rng.random((1, 40, 60))), torch.as_tensor(rng.random((1, 30, 50)))
    xI, xJ = [np.arange(40.0), np.arange(60.0)], [np.arange(30.0) * 2, np.arange(50.0) * 2]
    p = AlignParams(num_iterations=200, lddmm_coarse=2, lddmm_coarse_fraction=0.75, sigmaM=0.4, sigmaB=0.6)
    (Ic, _, Jc, _, n_coarse, noise_c, _), (If, _, Jf, _, n_fine, noise_f, _) = list(_lddmm_levels(I, xI, J, xJ, p))
    assert (tuple(Ic.shape), tuple(Jc.shape), n_coarse, noise_c) == ((1, 20, 30), (1, 15, 25), 150, (0.2, 0.3))
    assert If is I and Jf is J and n_fine == 50 and noise_f == (0.4, 0.6)
    assert len(list(_lddmm_levels(I, xI, J, xJ, AlignParams(num_iterations=200)))) == 1  # off by default


def test_init_A_starts_the_search_at_a_known_pose(dapi_small):
    """A rough starting affine (5° off, 5 % too large, ~19 target px off; e.g. from landmarks) with a search budget
    far too small to find a flipped pose from scratch still lands within a target pixel, keeping the flip."""
    pair = make_pair(dapi_small, 37, 0.8, -0.6)
    theta = np.deg2rad(42.0)
    rough = np.eye(3)
    rough[:2, :2] = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ np.diag([0.84, -0.63])
    rough[:2, 2] = pair.A[:2, 2] + 15.0
    tiny = dict(num_iterations=0, num_generations=3, ga_restarts=1, seed_population=False)
    assert _error(pair, gala(pair.xI, pair.I, pair.xJ, pair.J, **tiny)) > 3.0  # blind: lost
    result = gala(pair.xI, pair.I, pair.xJ, pair.J, init_A=rough, **tiny)
    assert _error(pair, result) < 1.0
    assert np.linalg.det(to_cpu(result)["A"][:2, :2].numpy()) < 0  # the flip is kept


def test_init_A_must_be_an_invertible_affine(dapi_small):
    pair = make_pair(dapi_small, 0, 1.0, 1.0, n_cells=500)
    with pytest.raises(GalaInputError, match="init_A"):
        gala(pair.xI, pair.I, pair.xJ, pair.J, init_A=np.zeros((3, 3)), num_iterations=0)


def test_a_warp_the_data_do_not_support_is_rejected_and_a_real_one_kept(dapi_small):
    """Cross-validated LDDMM: each fold's warp must raise the correlation on the pixels it never saw."""
    plain = make_pair(dapi_small, 30, 0.8, 0.8, kind="intensity")  # an exact affine: any warp only fits noise
    result = gala(plain.xI, plain.I, plain.xJ, plain.J, num_iterations=100)
    assert result["lddmm_validation"]["accepted"] is False
    assert float(to_cpu(result)["v"].abs().max()) == 0.0  # the affine result is returned unchanged
    warped = make_pair(dapi_small, 30, 0.8, 0.8, warp=12.0, kind="intensity")
    result = gala(warped.xI, warped.I, warped.xJ, warped.J, num_iterations=100)
    check = result["lddmm_validation"]
    assert check["accepted"] is True
    assert all(after > before for before, after in check["held_out_fitness"])
    assert _error(warped, result) < 0.6 * _error(warped, result, deformed=False)


def test_scored_pixels_are_capped_by_a_fixed_subset():
    """A fitness scores at most max_pixels target pixels: the same fixed subset every time, all of them below."""
    from gala_engine.search import _at_most

    weights = torch.ones(10_000)
    weights[:100] = 0.0
    kept = _at_most(weights, 1_000)
    assert int((kept > 0).sum()) == 1_000 and bool((kept[:100] == 0).all())
    assert torch.equal(kept, _at_most(weights, 1_000))
    assert torch.equal(_at_most(weights, 9_900), weights)


def test_a_masked_lddmm_fit_never_looks_outside_its_pixels():
    """A validation fold's fit uses its own pixels only (it resamples just those): whatever the target holds
    elsewhere leaves its field unchanged; the mask is a real restriction (the whole raster gives another field)."""
    from gala_engine.lddmm import run_lddmm
    from gala_engine.pipeline import _checkerboard_folds

    yy, xx = np.mgrid[0:48, 0:56].astype(np.float64)
    blob = np.exp(-((yy - 20) ** 2 + (xx - 24) ** 2) / 50.0) + 0.6 * np.exp(-((yy - 34) ** 2 + (xx - 38) ** 2) / 30.0)
    I = torch.as_tensor(blob[None])
    x = [np.arange(48.0), np.arange(56.0)]
    J = torch.as_tensor(np.roll(blob, (2, -1), axis=(0, 1))[None])  # shifted: a warp has something to fit
    fold = _checkerboard_folds((48, 56), torch.device("cpu"))[0].double()
    other = J.clone()
    other[0][fold == 0] = torch.as_tensor(np.random.default_rng(1).random(int((fold == 0).sum())))
    kw = dict(num_iterations=30, a=12.0, sigmaM=0.2, sigmaB=0.4)
    A = torch.eye(3, dtype=torch.float64)
    seen = run_lddmm(I, x, J, x, A, pixel_mask=fold, **kw)
    assert float(seen.v.abs().max()) > 0.0
    assert torch.allclose(seen.v, run_lddmm(I, x, other, x, A, pixel_mask=fold, **kw).v)
    assert not torch.allclose(seen.v, run_lddmm(I, x, other, x, A, **kw).v)
    assert float(seen.WM[fold == 0].abs().max()) == 0.0 and float(seen.WM[fold > 0].min()) > 0.0


def test_lddmm_warps_one_channel_mixed_by_the_affine_contrast_fit():
    """Two image channels, the cells following only the first: the mix LDDMM warps is (nearly) that channel."""
    from gala_engine.lddmm import velocity_grid
    from gala_engine.pipeline import _mixed_channels

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:50].astype(np.float64)
    first = np.exp(-((yy - 15) ** 2 + (xx - 20) ** 2) / 60.0) + 0.5 * np.exp(-((yy - 28) ** 2 + (xx - 35) ** 2) / 30.0)
    second = rng.random((40, 50))
    I = torch.as_tensor(np.stack([first, second]))
    x = [np.arange(40.0), np.arange(50.0)]
    J = torch.as_tensor(2.0 * first[None] + 0.1)
    mixed = _mixed_channels(I, x, J, x, torch.eye(3, dtype=torch.float64), velocity_grid(x, 8.0))
    assert mixed.shape == (1, 40, 50)
    assert np.corrcoef(mixed.numpy().ravel(), first.ravel())[0, 1] > 0.999


def test_whole_raster_finish_may_not_rescale_the_tissue_stage_pose():
    """The tutorial recipe (raw Sobel of an H&E) under flat-density cells, started at the true pose: the whole-raster
    "ncc" finish would shrink the section ~9 % (4 → 3.56 µm/px: the Sobel's bright outline ring pulled inside the
    cells' density) and land ~3 raster px off. It may not rescale the tissue stage's pose: the tissue fitness
    finishes instead and the scale stays within 2 % of the truth."""
    from gala_engine import rasterize
    from gala_engine.affine import genes_to_matrix_np, swap_xy
    from gala_engine.io import cell_signal
    from tests.validation.cases import get_case
    from tests.validation.runners import errors_um, tutorial_source

    case = get_case("uniform-visium_tiny_he-r200f-s4-spacing12")
    xy = np.asarray(case.adata.obsm["spatial"], dtype=np.float64)
    YI, XI, I = tutorial_source(case.image)
    XJ, YJ, J = rasterize(xy[:, 0], xy[:, 1], g=cell_signal(case.adata), dx=30.0)
    xI, xJ = [YI, XI], [YJ, XJ]
    truth = swap_xy(case.transform.M)  # image px (x, y) → µm (x, y) as the engine's (row, col)
    res = to_cpu(gala(xI, I, xJ, J, init_A=truth, num_iterations=0, num_generations=3, ga_restarts=1,
                      seed_population=False))
    assert res["fitness_used"] == "tissue"  # the ncc finish ran and was refused
    scales = np.abs(np.asarray(res["genes"])[1:3])
    assert np.all(np.abs(scales / 4.0 - 1.0) < 0.02)
    Ai = np.linalg.inv(genes_to_matrix_np(np.asarray(res["genes"]), xI, xJ))
    rc = xy[:, ::-1] @ Ai[:2, :2].T + Ai[:2, 2]
    assert np.median(errors_um(case, rc[:, ::-1])) <= 30.0  # within one raster pixel


def test_the_held_out_check_sees_the_tissue_outline_just_outside_the_cells(monkeypatch):
    """A flat density inside the cells' support: only the image's outline, which the affine leaves a few pixels
    outside the cells, shows the warp. The held-out check over the widened support accepts the warp that pulls the
    outline in; over the support alone (flat inside) it finds no evidence (``inside`` False)."""
    from gala_engine.lddmm import default_a, velocity_grid
    from gala_engine.params import AlignParams
    from gala_engine.pipeline import _checkerboard_folds, _fold_fits, _validate_warp

    rows, cols = np.mgrid[0:64, 0:64].astype(np.float64)
    r = np.hypot(rows - 32.0, cols - 32.0)
    image = torch.as_tensor((r < 23.0).astype(np.float64))[None]  # the tissue reaches 3 px beyond the cells
    counts = np.random.default_rng(0).poisson(4.0 * (r < 20.0))  # a flat density of cells, counts per pixel
    cells = torch.as_tensor(counts / counts.max(), dtype=torch.float64)[None]
    x = [np.arange(64.0), np.arange(64.0)]
    A = torch.eye(3, dtype=torch.float64)
    xv = velocity_grid(x, default_a(x))
    folds = _checkerboard_folds((64, 64), "cpu")
    fits, stopped = _fold_fits(image, x, cells, x, A, AlignParams(num_iterations=100), None, xv, folds, [], None,
                               None, 0)
    check = _validate_warp(image, x, cells, x, A, fits, folds)
    assert not stopped and check["accepted"] is True and check["inside"] is False
    assert all(after > before for before, after in check["held_out_fitness"])
    # the same warp with its smaller held-out gain just under the noise floor is refused
    import gala_engine.pipeline as pipeline

    smallest = min(after - before for before, after in check["held_out_fitness"])
    assert smallest > pipeline.MIN_HELD_OUT_GAIN
    monkeypatch.setattr(pipeline, "MIN_HELD_OUT_GAIN", smallest + 1e-9)
    assert _validate_warp(image, x, cells, x, A, fits, folds)["accepted"] is False


def test_a_fitness_reads_beyond_the_frame_as_its_padding_says():
    """Zeros beyond the image's frame (empty slide) by default; ``padding="reflection"`` (a frame filled with tissue,
    the CLI/app's last refinement) reads the image's mirror there: a pose that puts the cells half outside the frame
    then still sees tissue, not glass."""
    from gala_engine.affine import genes_to_theta
    from gala_engine.search import BatchedFitness

    yy, xx = np.mgrid[0:40, 0:60].astype(np.float64)
    I = torch.as_tensor((1.0 + np.sin(xx / 3.0) * np.cos(yy / 4.0))[None])  # texture up to the frame's edge
    x = [np.arange(40.0), np.arange(60.0)]
    J = I.clone()
    genes = torch.tensor([[0.0, 1.0, 1.0, 0.0, 30.0]], dtype=torch.float64)  # the cells moved half a frame right
    values = {}
    for padding in (None, "reflection"):
        fit = BatchedFitness(I, x, J, x, kind="ncc", scale_floor=0.0, padding=padding)
        theta = genes_to_theta(genes, fit.xI, fit.xJ, fit.cI, fit.cJ)
        values[padding] = fit._resample(theta)[0, 0].reshape(40, 60).numpy()
    # target columns 0-29 see image columns -30…-1: beyond the left edge
    assert np.abs(values[None][:, :29]).max() == 0.0
    mirrored = I[0].numpy()[:, 30:1:-1]  # image column c − 30 read at 30 − c (align_corners=True: about pixel centre 0)
    np.testing.assert_allclose(values["reflection"][:, :29], mirrored, atol=1e-9)
    np.testing.assert_allclose(values[None][:, 31:], values["reflection"][:, 31:], atol=1e-9)  # inside: the same
