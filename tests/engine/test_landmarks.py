"""Landmarks: affine from point pairs (with flips), landmark error of results, CSV / Xenium files."""

from __future__ import annotations

import numpy as np
import pytest

from gala_engine.demo import load_demo
from gala_engine.errors import GalaInputError
from gala_engine.landmarks import (
    Landmarks,
    apply_matrix,
    fit_landmarks,
    landmark_errors,
    landmark_summary,
    landmarks_csv,
    matrix_from_xenium,
    matrix_to_xenium,
    read_landmarks,
    read_xenium_matrix,
    result_affine,
    write_landmarks,
    write_xenium_matrix,
)
from gala_engine.section import AlignmentResult

SWAP = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _um_to_px_xy(angle: float, scale: float, shift, *, flip: bool = False, shear: float = 0.0) -> np.ndarray:
    """A 3×3 µm (x, y) → px (x, y): rotation · scale (· shear) (· a flip of x) + shift."""
    t = np.deg2rad(angle)
    L = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    if flip:
        L = L @ np.diag([-1.0, 1.0])
    M = np.eye(3)
    M[:2, :2], M[:2, 2] = L, shift
    return M


def _pairs(M_xy: np.ndarray, n: int = 6, *, noise: float = 0.0, seed: int = 0) -> tuple[Landmarks, np.ndarray]:
    rng = np.random.default_rng(seed)
    cells = rng.uniform(0, 2000, size=(n, 2))
    image = apply_matrix(M_xy, cells) + rng.normal(0, noise, size=(n, 2))
    return Landmarks(image, cells), M_xy


def _A_from_xy(M_xy: np.ndarray) -> np.ndarray:
    """µm (x, y) → px (x, y) as GALA's A: px (row, col) → µm (row, col)."""
    return SWAP @ np.linalg.inv(M_xy) @ SWAP


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("kind", ["similarity", "affine"])
def test_fit_recovers_known_transform_with_flip(flip, kind):
    M = _um_to_px_xy(130.0, 0.37, (812.0, -40.0), flip=flip)
    lm, _ = _pairs(M, n=3)
    fit = fit_landmarks(lm, kind=kind)
    assert fit.mirrored == flip
    # held-out points land within 0.1 px (the bound) — here to rounding
    test_cells = np.random.default_rng(9).uniform(-500, 2500, size=(200, 2))
    truth = apply_matrix(M, test_cells)
    got = apply_matrix(np.linalg.inv(fit.A), test_cells[:, ::-1])[:, ::-1]
    assert np.abs(got - truth).max() < 0.1
    assert fit.median_px < 1e-6
    np.testing.assert_allclose(fit.A, _A_from_xy(M), atol=1e-9)
    assert fit.scale_um_per_px == pytest.approx(1 / 0.37)


def test_fit_without_flip_allowed_cannot_fit_a_mirror():
    lm, _ = _pairs(_um_to_px_xy(20.0, 1.0, (0, 0), flip=True), n=5)
    fit = fit_landmarks(lm, allow_flip=False)
    assert not fit.mirrored and fit.median_px > 10


def test_affine_fit_recovers_shear_and_similarity_does_not():
    M = _um_to_px_xy(-35.0, 2.0, (100.0, 50.0), shear=0.15)
    lm, _ = _pairs(M, n=8)
    assert fit_landmarks(lm, kind="affine").median_px < 1e-6
    assert fit_landmarks(lm, kind="similarity").median_px > 1.0


@pytest.mark.parametrize("noise", [0.5, 2.0, 5.0])
def test_noise_degrades_gracefully(noise):
    """Error on held-out points stays of the order of the click noise and shrinks with more pairs."""
    M = _um_to_px_xy(75.0, 0.5, (300.0, 200.0), flip=True)
    test_cells = np.random.default_rng(5).uniform(0, 2000, size=(500, 2))
    truth = apply_matrix(M, test_cells)
    errs = []
    for n in (4, 30):
        med = []
        for seed in range(10):
            lm, _ = _pairs(M, n=n, noise=noise, seed=seed)
            fit = fit_landmarks(lm)
            assert fit.mirrored
            got = apply_matrix(np.linalg.inv(fit.A), test_cells[:, ::-1])[:, ::-1]
            med.append(np.median(np.linalg.norm(got - truth, axis=1)))
        errs.append(float(np.median(med)))
    assert errs[0] < 2.5 * noise
    assert errs[1] < errs[0]
    lm, _ = _pairs(M, n=200, noise=noise, seed=3)
    assert fit_landmarks(lm).sigma_px == pytest.approx(noise, rel=0.15)  # the clicks' scatter, from residuals


def test_residuals_flag_a_wrong_pair():
    M = _um_to_px_xy(10.0, 1.0, (50.0, 60.0))
    lm, _ = _pairs(M, n=6)
    lm.image_xy[2] += (40.0, -30.0)
    fit = fit_landmarks(lm)
    assert int(np.argmax(fit.residuals_px)) == 2


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([[0, 0, 0, 0], [10, 10, 10, 10]], "at least 3"),
        ([[0, 0, 0, 0], [10, 10, 10, 10], [20, 20, 20, 20]], "one line"),
        ([[0, 0, 0, 0], [10, 0, 10, 0], [np.nan, 5, 5, 5]], "NaN"),
        ([[0, 0, 0, 0], [10, 0, 10, 0], [0, 0, 0, 10]], "one line|spread"),
    ],
)
def test_bad_pairs_are_refused(rows, match):
    with pytest.raises(GalaInputError, match=match):
        fit_landmarks(Landmarks.from_rows(rows))


def test_points_outside_the_image_are_refused():
    lm = Landmarks.from_rows([[5, 5, 0, 0], [50, 5, 10, 0], [5, 900, 0, 10]])
    with pytest.raises(GalaInputError, match="outside"):
        fit_landmarks(lm, image_shape=(600, 600))
    assert fit_landmarks(lm, kind="affine", image_shape=(1000, 600)).median_px < 1e-6


# ------------------------------------------------------------------------------------- errors of results


def _affine_result(A: np.ndarray) -> AlignmentResult:
    xv = [np.linspace(0, 600, 8), np.linspace(0, 600, 8)]
    return AlignmentResult(A=A, A_affine=A, v=np.zeros((3, 8, 8, 2)), xv=xv, genes=np.zeros(5), fitness=0.0,
                           score=0.0, params={})


def test_landmark_errors_agree_with_the_true_error_on_a_demo():
    """check mode: noiseless landmarks from the truth report each pair's true error of a wrong result."""
    demo = load_demo("visium_tiny")
    M = np.vstack([demo.um_to_px, [0, 0, 1]])
    cells = np.asarray(demo.adata.obsm["spatial"], np.float64)[[0, 30, 60, 90]]
    lm = Landmarks(apply_matrix(M, cells), cells)
    wrong = M.copy()
    wrong[:2, 2] += (7.0, -3.0)  # a result 7.6 px off
    res = _affine_result(_A_from_xy(wrong))
    true_err = np.linalg.norm(res.cells_to_image(cells) - apply_matrix(M, cells), axis=1)
    np.testing.assert_allclose(landmark_errors(res, lm), true_err, atol=1e-6)
    assert landmark_errors(res, lm) == pytest.approx(np.hypot(7, 3))
    s = landmark_summary(_A_from_xy(M), lm)
    assert s["median_px"] < 1e-6 and len(s["pairs"]) == 4 and s["pairs"][0]["name"] == "1"


def test_landmark_errors_use_the_lddmm_warp():
    """With a velocity field the error follows cells_to_image (warp included), not A alone."""
    A = _A_from_xy(_um_to_px_xy(0.0, 1.0, (0.0, 0.0)))
    res = _affine_result(A)
    res.v = np.zeros_like(res.v)
    res.v[..., 1] = 5.0  # a constant flow along columns
    cells = np.array([[100.0, 100.0], [300.0, 150.0], [200.0, 400.0], [450.0, 450.0]])
    lm = Landmarks(res.cells_to_image(cells), cells)
    assert landmark_errors(res, lm).max() < 1e-9
    assert landmark_errors(res.A, lm).min() > 1.0  # the affine alone misses the warp
    Afit = result_affine(res, cells)
    assert landmark_errors(Afit, lm).max() < 0.01  # a (near-)constant shift is affine: the fit absorbs it


# ------------------------------------------------------------------------------------- files


def test_gala_csv_round_trip(tmp_path):
    lm, _ = _pairs(_um_to_px_xy(33.0, 1.7, (5.0, 7.0)), n=5, noise=1.0)
    lm.names[1] = "bright vessel"
    path = write_landmarks(tmp_path / "pairs.csv", lm)
    assert path.read_text().splitlines()[0] == "image_x,image_y,cells_x,cells_y,name"
    back = read_landmarks(path)
    np.testing.assert_array_equal(back.image_xy, lm.image_xy)
    np.testing.assert_array_equal(back.cells_xy, lm.cells_xy)
    assert back.names == lm.names
    assert read_landmarks(path.read_bytes()).names[1] == "bright vessel"


def test_gala_csv_without_names_and_in_any_column_order(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("cells_x,cells_y,image_x,image_y\n0,0,1,2\n10,0,11,2\n0,10,1,12\n")
    lm = read_landmarks(p)
    np.testing.assert_array_equal(lm.image_xy, [[1, 2], [11, 2], [1, 12]])
    assert lm.names == ["1", "2", "3"]


@pytest.mark.parametrize("unit", ["um", "px"])
def test_xenium_keypoints_round_trip(tmp_path, unit):
    lm, _ = _pairs(_um_to_px_xy(-70.0, 0.8, (1000.0, 20.0)), n=4)
    text = landmarks_csv(lm, fmt="xenium", fixed_unit=unit)
    assert text.splitlines()[0] == "fixedX,fixedY,alignmentX,alignmentY"
    first = [float(v) for v in text.splitlines()[1].split(",")]
    factor = 0.2125 if unit == "px" else 1.0
    np.testing.assert_allclose(first, [*lm.cells_xy[0] / factor, *lm.image_xy[0]])
    p = tmp_path / "keypoints.csv"
    p.write_text(text)
    back = read_landmarks(p, fixed_unit=unit)
    np.testing.assert_allclose(back.cells_xy, lm.cells_xy, rtol=1e-12)
    np.testing.assert_allclose(back.image_xy, lm.image_xy)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b,c,d\n1,2,3,4\n", "columns"),
        ("", "empty"),
        ("image_x,image_y,cells_x,cells_y\n1,2,3,4\n5,6,7,9\n", "at least 3"),
        ("image_x,image_y,cells_x,cells_y\n1,2,3,4\n5,x,7,8\n9,1,2,3\n", "not a number"),
        ("image_x,image_y,cells_x,cells_y\n1,2,3,4\n5,nan,7,8\n9,1,2,3\n", "NaN"),
        ("fixedX,fixedY,alignmentX,alignmentY\n1,1,1,1\n2,2,2,2\n3,3,3,3\n", "one line"),
    ],
)
def test_bad_landmark_files_get_a_clear_message(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(GalaInputError, match=match):
        read_landmarks(p)


def test_missing_landmark_file():
    with pytest.raises(GalaInputError, match="not found"):
        read_landmarks("/nonexistent/pairs.csv")


def test_xenium_matrix_round_trip_and_meaning(tmp_path):
    M_xy = _um_to_px_xy(12.0, 2.5, (40.0, 90.0), flip=True)
    A = _A_from_xy(M_xy)
    path = write_xenium_matrix(tmp_path / "matrix.csv", A, pixel_size=0.5)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[2] == "0,0,1"
    X = np.loadtxt(path, delimiter=",")
    # H&E pixel (x, y) → Xenium pixel; × pixel_size = µm (x, y)
    px = np.array([[10.0, 20.0], [300.0, 5.0]])
    um = apply_matrix(np.linalg.inv(M_xy), px)
    np.testing.assert_allclose(apply_matrix(X, px) * 0.5, um, atol=1e-9)
    np.testing.assert_allclose(read_xenium_matrix(path, pixel_size=0.5), A, atol=1e-12)
    np.testing.assert_allclose(matrix_from_xenium(matrix_to_xenium(A)), A, atol=1e-12)


def test_xenium_kb_example_matrix():
    """The matrix of 10x's knowledge-base example: H&E (0, 0) → Xenium pixel (807.98, 73097.66)."""
    text = (b"0.011071028838929093,1.2895790134339569,807.9788953065927\n"
            b"-1.2895790134339569,0.011071028838929093,73097.655174759\n0,0,1\n")
    A = read_xenium_matrix(text)
    um_rc = A @ np.array([0.0, 0.0, 1.0])  # image (row, col) = (0, 0)
    np.testing.assert_allclose(um_rc[:2], [73097.655174759 * 0.2125, 807.9788953065927 * 0.2125])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"fixedX,fixedY,alignmentX,alignmentY\n1,2,3,4\n", "not a transformation matrix"),
        (b"1,0\n0,1\n", "3"),
        (b"1,0,0\n0,1,0\n1,0,1\n", "last row"),
        (b"1,1,0\n1,1,0\n0,0,1\n", "singular"),
        (b"nan,0,0\n0,1,0\n0,0,1\n", "NaN"),
    ],
)
def test_bad_xenium_matrix(text, match):
    with pytest.raises(GalaInputError, match=match):
        read_xenium_matrix(text)


# ------------------------------------------------------------------------------------- manual results


def test_affine_result_maps_like_its_matrix_and_round_trips_npz(tmp_path):
    from gala_engine.manual import affine_result

    M = _um_to_px_xy(40.0, 3.0, (120.0, 80.0), flip=True)
    res = affine_result(_A_from_xy(M), image_shape=(600, 500))
    cells = np.random.default_rng(1).uniform(0, 100, size=(20, 2))
    np.testing.assert_allclose(res.cells_to_image(cells), apply_matrix(M, cells), atol=1e-9)
    back = AlignmentResult.load_npz(res.save_npz(tmp_path / "t.npz"))
    np.testing.assert_allclose(back.cells_to_image(cells), apply_matrix(M, cells), atol=1e-9)
    assert back.origin["source"] == "landmarks"


def test_nudges_move_the_cells_on_the_image_as_named():
    from gala_engine.manual import affine_result, nudge

    M = _um_to_px_xy(0.0, 2.0, (100.0, 100.0))
    res = affine_result(_A_from_xy(M))
    cells = np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 20.0], [50.0, 20.0]])  # image box x 100–200, y 100–140
    before = res.cells_to_image(cells)
    centre = before.mean(axis=0)
    moved = nudge(res, cells_xy=cells, shift_xy=(5.0, -3.0)).cells_to_image(cells)
    np.testing.assert_allclose(moved, before + (5.0, -3.0), atol=1e-9)
    rot = nudge(res, cells_xy=cells, rotate_deg=90).cells_to_image(cells)
    np.testing.assert_allclose(rot.mean(axis=0), centre, atol=1e-9)  # about the cells' centre
    d0, d1 = before[1] - before[0], rot[1] - rot[0]  # +x turns to +y (down): clockwise on screen
    np.testing.assert_allclose(d1, [-d0[1], d0[0]], atol=1e-9)
    fx = nudge(res, cells_xy=cells, flip_x=True).cells_to_image(cells)
    np.testing.assert_allclose(fx[:, 0], 2 * centre[0] - before[:, 0], atol=1e-9)
    np.testing.assert_allclose(fx[:, 1], before[:, 1], atol=1e-9)
    big = nudge(res, cells_xy=cells, scale=1.5).cells_to_image(cells)
    np.testing.assert_allclose(big - centre, 1.5 * (before - centre), atol=1e-9)
    np.testing.assert_allclose(res.cells_to_image(cells), before)  # the input result is untouched


def test_landmarks_in_the_aligned_h5ad(tmp_path):
    import anndata as ad

    from gala_engine.manual import affine_result
    from gala_engine.section import write_aligned

    demo = load_demo("visium_tiny")
    M = np.vstack([demo.um_to_px, [0, 0, 1]])
    cells = np.asarray(demo.adata.obsm["spatial"], np.float64)[[0, 40, 80]]
    lm = Landmarks(apply_matrix(M, cells) + (1.0, 0.0), cells, ["a", "b", "c"])
    path = write_aligned(demo.adata, affine_result(_A_from_xy(M)), tmp_path / "o.h5ad", landmarks=lm)
    uns = ad.read_h5ad(path).uns["gala"]["landmarks"]
    assert list(uns["names"]) == ["a", "b", "c"]
    np.testing.assert_allclose(uns["error_px"], 1.0, atol=1e-6)
    assert uns["median_px"] == pytest.approx(1.0)
