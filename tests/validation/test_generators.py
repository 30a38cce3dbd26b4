"""The validation generators themselves are right (cheap: no alignment runs)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.validation.cases import (
    FAMILIES,
    IMAGES,
    SPECS,
    KnownTransform,
    build_case,
    detect_nuclei,
    get_case,
    hex_lattice,
    load_image,
    make_warp,
    pose_matrix,
    specs,
    tissue_mask,
    uniform_points,
)

FAST = [s.name for s in specs(fast=True)]


def test_every_family_has_fast_cases_and_no_fast_case_is_heldout():
    fams = {s.family for s in specs(fast=True)}
    assert fams == set(FAMILIES)
    assert not any(s.heldout for s in specs(fast=True))
    assert all(s.heldout for s in specs(heldout=True))
    assert len({s.name for s in SPECS}) == len(SPECS)  # names are unique


def test_transforms_cover_the_issue_ranges():
    committed = [s for s in SPECS if not s.heldout]
    assert {s.flip for s in committed} == {True, False}
    angles = np.mod([s.angle for s in committed], 360)
    assert np.histogram(angles, bins=4, range=(0, 360))[0].min() > 0  # all round
    scales = [s.um_per_px for s in committed if s.family != "merfish"]
    assert min(scales) <= 0.5 and max(scales) >= 4.0
    warps = [s.warp_um for s in committed if s.warp_um]
    assert warps and min(warps) >= 15 and max(warps) <= 30


@pytest.mark.parametrize("name", FAST)
def test_truth_round_trip(name):
    case = get_case(name)
    xy = np.asarray(case.adata.obsm["spatial"], dtype=np.float64)
    assert xy.shape == case.truth_xy_px.shape == (case.adata.n_obs, 2)
    back = case.transform.inverse(xy)
    assert np.abs(back - case.truth_xy_px).max() < 1e-6
    # truths lie on the image
    h, w = case.image.shape[:2]
    t = case.truth_xy_px
    assert (t[:, 0] > -1).all() and (t[:, 0] < w).all() and (t[:, 1] > -1).all() and (t[:, 1] < h).all()
    assert case.um_per_px == pytest.approx(case.transform.um_per_px)


@pytest.mark.parametrize("name", FAST)
def test_case_data_are_well_formed(name):
    case = get_case(name)
    X = np.asarray(case.adata.X)
    assert case.adata.n_vars >= 3 and (X >= 0).all() and np.isfinite(X).all()
    totals = X.sum(1)
    assert (totals > 0).mean() > 0.9  # real MERFISH: 93 %
    assert case.image.dtype in (np.uint8, np.uint16) and case.image.ndim in (2, 3)
    assert max(case.image.shape[:2]) <= 1200 and case.adata.n_obs <= 30000  # fast-case size


def test_merfish_truth_is_the_bundled_ground_truth():
    from gala_engine.demo import load_demo, truth_px_xy

    spec = next(s for s in SPECS if s.family == "merfish" and s.angle == 0 and not s.warp_um)
    case = build_case(spec)
    full = truth_px_xy(load_demo("merfish_mini"))
    k = dict(spec.options).get("reduce", 4)
    np.testing.assert_allclose(case.truth_xy_px, (full + 0.5) / k - 0.5)
    # unrotated, unshifted: obsm['spatial'] is the original µm
    np.testing.assert_allclose(case.adata.obsm["spatial"], load_demo("merfish_mini").adata.obsm["spatial"], atol=1e-6)


@pytest.mark.parametrize("amplitude", [15.0, 22.0, 30.0])
def test_warp_is_smooth_non_affine_and_has_the_requested_amplitude(amplitude):
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 1500, size=(2000, 2))
    warp = make_warp(pts, amplitude, rng)
    d = warp(pts)
    mags = np.linalg.norm(d, axis=1)
    assert mags.max() == pytest.approx(amplitude, rel=1e-9)
    assert np.median(mags) > 0.2 * amplitude  # not a single local bump
    # no affine part left (least squares)
    lin = np.linalg.lstsq(np.c_[pts, np.ones(len(pts))], d, rcond=None)[0]
    assert np.abs(lin[:2]).max() < 1e-9 and np.abs(lin[2]).max() < 1e-6
    # smooth: a small contraction (invertible by fixed point), gradient well below 1
    eps = 1.0
    grad = np.linalg.norm(warp(pts + [eps, 0]) - d, axis=1) / eps
    assert grad.max() < 0.3
    # more than one mode: the field is not one sinusoid along one direction
    assert np.linalg.matrix_rank(np.c_[d, np.ones(len(d))], tol=1e-3 * amplitude) == 3


@pytest.mark.parametrize("name", [n for n in FAST if "-w" in n])
def test_warped_cases_have_their_amplitude(name):
    case = get_case(name)
    T = case.transform
    d = np.linalg.norm(T.forward(case.truth_xy_px) - T.affine(case.truth_xy_px), axis=1)
    assert 15.0 <= case.warp_um <= 30.0
    assert d.max() == pytest.approx(case.warp_um, rel=1e-6)


def test_pose_matrix_rotates_flips_and_scales():
    M = pose_matrix(90.0, True, 2.0, np.array([10.0, 20.0]), (5.0, -5.0), origin_um=(0.0, 0.0))
    T = KnownTransform(M)
    assert T.um_per_px == pytest.approx(2.0)
    assert np.linalg.det(M[:, :2]) < 0  # flip
    np.testing.assert_allclose(T.forward(np.array([[10.0, 20.0]])), [[5.0, -5.0]])
    np.testing.assert_allclose(T.inverse(T.forward(np.array([[1.0, 2.0], [30.0, -4.0]]))), [[1.0, 2.0], [30.0, -4.0]])


@pytest.mark.parametrize("name", ["visium_tiny_he", "os2_ki67"])
def test_uniform_family_is_flat_inside_the_mask(name):
    from scipy.ndimage import binary_erosion

    image = load_image(name)
    mask = tissue_mask(image, IMAGES[name].mask)
    spacing = 12.0
    pts = uniform_points(mask, spacing, np.random.default_rng(0))
    B = int(4 * spacing)
    inner = binary_erosion(mask, iterations=2)
    counts = []
    for r in range(0, mask.shape[0] - B, B):
        for c in range(0, mask.shape[1] - B, B):
            if inner[r:r + B, c:c + B].all():
                sel = (pts[:, 0] >= c) & (pts[:, 0] < c + B) & (pts[:, 1] >= r) & (pts[:, 1] < r + B)
                counts.append(sel.sum())
    counts = np.asarray(counts, dtype=float)
    assert len(counts) >= 10
    assert counts.std() / counts.mean() < 0.15  # a Poisson process would give ~0.25 at 16 per block


@pytest.mark.parametrize("name", [n for n in FAST if n.startswith("uniform")])
def test_fast_flat_density_cases_are_flat(name):
    """CV of the cell count in blocks of 4×4 cell spacings lying wholly inside the tissue."""
    from scipy.ndimage import binary_erosion

    case = get_case(name)
    mask = tissue_mask(case.image, IMAGES[case.spec.image].mask)
    spacing_px = dict(case.spec.options)["spacing_um"] / case.um_per_px
    B = int(round(4 * spacing_px))
    inner = binary_erosion(mask, iterations=2)
    H, _, _ = np.histogram2d(case.truth_xy_px[:, 1], case.truth_xy_px[:, 0],
                             bins=[np.arange(0, mask.shape[0] - B + 1, B), np.arange(0, mask.shape[1] - B + 1, B)])
    full = np.array([[inner[r:r + B, c:c + B].all() for c in range(0, B * H.shape[1], B)]
                     for r in range(0, B * H.shape[0], B)])
    counts = H[full]
    assert len(counts) >= 10
    assert counts.std() / counts.mean() < 0.15


def test_uniform_cases_fill_their_mask_and_counts_ignore_the_image():
    spec = next(s for s in specs(fast=True) if s.family == "uniform")
    case = build_case(spec)
    from tests.validation.cases import darkness, sample_at

    dark = sample_at(darkness(case.image), case.truth_xy_px)
    totals = np.asarray(case.adata.X).sum(1)
    assert abs(np.corrcoef(dark, totals)[0, 1]) < 0.15


def test_tissue_masks_are_plausible():
    for name, (lo, hi) in {"visium_tiny_he": (0.25, 0.6), "os2_ki67": (0.6, 0.95), "visium_dg_he": (0.7, 1.0),
                            "os2_ki67_tile": (0.9, 1.0)}.items():
        frac = tissue_mask(load_image(name), IMAGES[name].mask).mean()
        assert lo < frac < hi, (name, frac)


def test_hex_lattice_has_the_pitch():
    from scipy.spatial import cKDTree

    mask = np.ones((400, 500), bool)
    pts = hex_lattice(mask, 20.0, np.random.default_rng(1))
    d, _ = cKDTree(pts).query(pts, k=7)
    np.testing.assert_allclose(d[:, 1], 20.0, rtol=1e-9)
    interior = (pts[:, 0] > 30) & (pts[:, 0] < 470) & (pts[:, 1] > 30) & (pts[:, 1] < 370)
    np.testing.assert_allclose(d[interior, 1:7], 20.0, rtol=1e-9)  # six neighbours at the pitch


def test_nuclei_detection_finds_nuclei_on_the_stained_images():
    for name, (lo, hi) in {"os1_he": (200, 600), "os2_ki67": (500, 2000)}.items():
        src = IMAGES[name]
        image = load_image(name)
        nuc = detect_nuclei(image, src.nucleus_radius_px, src.stains)
        assert lo < len(nuc) < hi, (name, len(nuc))
        from scipy.spatial import cKDTree

        d, _ = cKDTree(nuc).query(nuc, k=2)
        assert np.median(d[:, 1]) > src.nucleus_radius_px  # about a nucleus apart, not noise


def test_nuclei_sit_on_hematoxylin():
    from tests.validation.cases import nuclear_density, sample_at

    src = IMAGES["os1_he"]
    image = load_image("os1_he")
    od = nuclear_density(image, src.stains)
    nuc = detect_nuclei(image, src.nucleus_radius_px, src.stains)
    rng = np.random.default_rng(0)
    rand = rng.uniform(0, image.shape[0] - 1, size=(2000, 2))
    assert np.median(sample_at(od, nuc)) > 1.5 * np.median(sample_at(od, rand))


def test_nuclei_library_sizes_follow_the_stain():
    case = get_case(next(s.name for s in specs(fast=True) if s.family == "nuclei"))
    from tests.validation.cases import nuclear_density, sample_at

    src = IMAGES[case.spec.image]
    od = sample_at(nuclear_density(case.image, src.stains), case.truth_xy_px)
    totals = np.asarray(case.adata.X).sum(1)
    assert np.corrcoef(np.log1p(totals), od)[0, 1] > 0.1
    assert 0.3 < np.std(np.log(totals[totals > 0])) < 1.0  # lognormal spread


def test_heldout_cases_build_but_are_not_in_the_default_lists():
    held = specs(heldout=True)
    assert held and all(s.image in ("skimage_ihc", "torchstain_source", "torchstain_target") for s in held)
    assert not set(s.name for s in held) & set(s.name for s in specs())
    for spec in held:  # every held-out builder works (local-only images only where present)
        case = build_case(spec)
        assert case.heldout and case.adata.n_obs > 100
        assert np.abs(case.transform.inverse(np.asarray(case.adata.obsm["spatial"])) - case.truth_xy_px).max() < 1e-6


def test_partial_coverage_dropout_and_extra_cells():
    from tests.validation.cases import CaseSpec

    base = CaseSpec("nuclei", "os2_ki67", 2.0, 10.0, False)
    full = build_case(base)
    spec = CaseSpec("nuclei", "os2_ki67", 2.0, 10.0, False, options=(("coverage", 0.5), ("dropout", 0.2), ("extra", 0.1)))
    part = build_case(spec)
    h, w = part.image.shape[:2]
    box = np.ptp(part.truth_xy_px, 0)
    assert box[0] * box[1] < 0.55 * w * h  # only a rectangle of about half the image
    expected = 0.5 * full.adata.n_obs * 0.8 * 1.1
    assert 0.7 * expected < part.adata.n_obs < 1.3 * expected
    back = part.transform.inverse(np.asarray(part.adata.obsm["spatial"]))
    assert np.abs(back - part.truth_xy_px).max() < 1e-6
