"""The runners' plumbing on a tiny budget (not accuracy): files written and read back, errors scored."""

from __future__ import annotations

import numpy as np

from tests.validation.cases import CaseSpec, build_case
from tests.validation.runners import errors_um, run_cli_defaults, run_tutorial, tutorial_gene_space

TINY = {"num_generations": 2, "ga_restarts": 1, "num_iterations": 2, "seed_population": False,
        "refine_iterations": 0}


def _case():
    return build_case(CaseSpec("merfish", "merfish_dapi", 0.0, 30.0, True, options=(("reduce", 8.0),)))


def test_errors_are_zero_at_the_truth_and_scale_with_um_per_px():
    case = _case()
    assert np.allclose(errors_um(case, case.truth_xy_px), 0)
    assert np.allclose(errors_um(case, case.truth_xy_px + [3.0, 4.0]), 5.0 * case.um_per_px)


def test_cli_runner_reads_both_results_back():
    case = _case()
    o = run_cli_defaults(case, signal="cell density", params=TINY)
    assert not o.error, o.error
    assert np.isfinite(o.median_um) and o.affine_median_um is not None and o.dx_um > 0
    assert o.median_raster_px == o.median_um / o.dx_um and o.n_cells == case.adata.n_obs
    assert "--signal" in o.path and "num_generations=2" in o.path


def test_cli_runner_reports_a_failure_as_a_row():
    case = _case()
    o = run_cli_defaults(case, ["--dx", "-1"])
    assert o.error and np.isnan(o.median_um)


def test_tutorial_runner_runs_the_recipe():
    case = _case()
    o = run_tutorial(case, num_generations=2, num_iterations=2, num_repeats=1)
    assert not o.error, o.error
    assert o.dx_um == 30.0 and np.isfinite(o.median_um) and o.affine_median_um is not None


def test_tutorial_gene_space_allows_flips_and_scales_down_to_001():
    space = tutorial_gene_space([np.arange(100.0), np.arange(120.0)], [np.arange(0, 300.0, 30), np.arange(0, 360.0, 30)])
    assert space[0] == {"low": -180.0, "high": 180.0}
    for k in (1, 2):  # a negative scale is a flip; |scale| from 0 (so 0.01 included) to the compatible bound
        assert space[k]["low"] == -space[k]["high"] and space[k]["high"] > 1
