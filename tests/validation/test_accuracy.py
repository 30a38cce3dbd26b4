"""Issue 11's accuracy targets on the validation suite's fast subset (slow: each case runs the engine).

Targets (medians): CLI defaults ≤ 10 µm on nuclei-derived cells (warped included), ≤ 3 µm on MERFISH
+ DAPI, ≤ 1 cell-raster pixel on flat-density sections; the published tutorial's recipe ≤ 1 raster
pixel unwarped / ≤ 2 warped; LDDMM ≥ 30 % below the affine-only error on warped cases and never more
than 10 % above it on unwarped ones. ``python bench/accuracy_table.py --fast`` prints the same runs.
"""

from __future__ import annotations

import os

import pytest

from tests.validation.cases import get_case, specs
from tests.validation.runners import run_cli_defaults, run_tutorial

FAST = specs(fast=True)
_CACHE: dict[tuple[str, str], object] = {}

# Known misses, measured at the last engine change (python bench/accuracy_table.py --fast); xfail, not strict, so
# a fix shows up as XPASS. Keys: (test, case).
_FLAT_WARP = "uniform-visium_tiny_he-r290-s4-w25-spacing12"
_SPOTS_TINY = "spots-visium_tiny_he-r30-s4-pitch55"
KNOWN_MISSES = {
    ("flat", _FLAT_WARP): "flat density under a 25 µm warp: 11.4 µm = 1.14 raster px (affine 16.5 µm; 10.7 / 1.07 "
                          "with linear counts): only the "
                          "outline carries the warp; LDDMM fitted and validated on the outline band (a flat section) "
                          "recovers it near the outline (cells < 200 µm inside: 6.6-7.5 µm, affine 11.6-13.4) but not "
                          "deep inside (> 400 µm: 21.5 µm, affine 25.1)",
    # (the CLI landed these spots 822 µm off, mirrored, until the section pipeline tried log(1 + counts) as well:
    # 5.7 µm; gala_engine.section.choose_count_scale)
    ("tutorial1", _SPOTS_TINY): "857 µm: a mirrored pose scores above the truth with the raw Sobel feature and the "
                                "spots' linear totals (mostly library-size noise on a near-symmetric section)",
    ("tutorial1", "nuclei-os1_he-r190f-s4"): "2.6 mm: 349 sparse nuclei over a 4.4 mm H&E filled with tissue; the raw "
                  "Sobel's score prefers poses that move a third of the cells beyond the frame (its zeros; like the "
                  "os1_he crops at 2.75-3.5 µm/px: truth 0.14 vs 0.26). The frame rule (pipeline._frame_order) does "
                  "not reach it: no scanned pose lies near the truth (80 raster px). The CLI's hematoxylin feature "
                  "lands 8 µm",
    ("tutorial1", "uniform-visium_tiny_he-r330-s3-spacing15"): "0.94 raster px since the tissue mask splits at the "
                  "empty slide's histogram valley (features.glass_split); before, 17 px: a mirrored pose, 1.25× "
                  "anisotropic, scored above the truth on every level of the raw Sobel (full ncc 0.957 vs 0.928; "
                  "python bench/pose_scores.py). Kept non-strict: 0.06 px from the threshold",
    # the tutorial's raw full-resolution Sobel is smoothed to the cell raster's scale inside gala()
    # (gala_engine/scale_match.py) and the whole-raster ncc finish may not rescale the tissue stage's pose
    # (pipeline.MAX_FINISH_RESCALE): the flat-density H&E cases now pass (0.58 and 0.86 raster px, were 2.81 and
    # 2.87 with a pose shrunk ~9 %). What remains is the feature's own optimum: the pose found scores above the truth
    ("tutorial1", "nuclei-os2_ki67-r225f-s2.5-coverage0.5-dropout0.15-extra0.05"): "cells on half the slide, raw "
                  "Sobel: 0.995 raster px with LDDMM (29.9 µm), 1.09 affine only (32.7 µm; no glass in the smoothed "
                  "Sobel, so no ncc finish: untouched by the rescale limit); the pose found scores above the truth on "
                  "every level (full 0.428 vs 0.392): the feature's limit, at the threshold (0.995 px; 0.84 px since "
                  "the glass-valley tissue mask; 0.95 px since the off-centre scan starts, whose best joins the "
                  "refinement)",
}


def _known(test: str, names: list[str]) -> list:
    """The case names as pytest params, the known misses of ``test`` marked xfail with their measured reason."""
    return [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_MISSES[(test, n)], strict=False))
            if (test, n) in KNOWN_MISSES else n for n in names]


@pytest.fixture(scope="module", autouse=True)
def _one_thread_when_loaded():
    """An oversubscribed CPU stalls torch's parallel regions (bench/README.md): one thread then."""
    import torch

    before = torch.get_num_threads()
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1):
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _outcome(name: str, path: str):
    key = (name, path)
    if key not in _CACHE:
        case = get_case(name)
        _CACHE[key] = run_cli_defaults(case) if path == "cli" else run_tutorial(case)
    o = _CACHE[key]
    assert not o.error, o.error
    return o


def _ids(family: str | None = None, warped: bool | None = None) -> list[str]:
    return [s.name for s in FAST if (family is None or s.family == family)
            and (warped is None or bool(s.warp_um) == warped)]


@pytest.mark.slow
@pytest.mark.parametrize("name", _ids("nuclei"))
def test_cli_defaults_nuclei_within_10_um(name):
    o = _outcome(name, "cli")
    assert o.median_um <= 10.0, o


@pytest.mark.slow
@pytest.mark.parametrize("name", _ids("nuclei"))
def test_cli_defaults_nuclei_well_below_one_raster_pixel(name):
    """Sub-pixel: each cell moved onto its nucleus after LDDMM (gala_engine.nuclei_fit). Without it these cases
    landed 0.31-0.83 raster px (the corner 0.55, the small section 0.83); with it 0.07-0.30."""
    o = _outcome(name, "cli")
    assert o.median_raster_px <= 0.4, o


@pytest.mark.slow
@pytest.mark.parametrize("name", _ids("merfish"))
def test_cli_defaults_merfish_within_3_um(name):
    o = _outcome(name, "cli")
    assert o.median_um <= 3.0, o


@pytest.mark.slow
@pytest.mark.parametrize("name", _known("flat", _ids("uniform")))
def test_cli_defaults_flat_density_within_one_raster_pixel(name):
    o = _outcome(name, "cli")
    assert o.median_raster_px <= 1.0, o


@pytest.mark.slow
@pytest.mark.parametrize("name", _known("spots", _ids("spots")))
def test_cli_defaults_spots_within_one_raster_pixel(name):
    o = _outcome(name, "cli")
    assert o.median_raster_px <= 1.0, o


@pytest.mark.slow
@pytest.mark.parametrize("name", _known("tutorial1", _ids(warped=False)))
def test_tutorial_recipe_unwarped_within_one_raster_pixel(name):
    o = _outcome(name, "tutorial")
    assert o.median_raster_px <= 1.0, o


@pytest.mark.slow
@pytest.mark.parametrize("name", _known("tutorial2", _ids(warped=True)))
def test_tutorial_recipe_warped_within_two_raster_pixels(name):
    o = _outcome(name, "tutorial")
    assert o.median_raster_px <= 2.0, o


@pytest.mark.slow
@pytest.mark.parametrize("name", _known("lddmm30", _ids(warped=True)))
def test_lddmm_cuts_the_affine_error_by_30_percent_on_warped_cases(name):
    o = _outcome(name, "cli")
    assert o.affine_median_um is not None, "the CLI wrote no affine-only positions"
    assert o.median_um <= 0.7 * o.affine_median_um, o


@pytest.mark.slow
@pytest.mark.parametrize("name", _ids(warped=False))
def test_lddmm_never_hurts_unwarped_cases_by_more_than_10_percent(name):
    o = _outcome(name, "cli")
    assert o.affine_median_um is not None, "the CLI wrote no affine-only positions"
    assert o.median_um <= 1.1 * max(o.affine_median_um, 0.5), o  # 0.5 µm: below that, noise
