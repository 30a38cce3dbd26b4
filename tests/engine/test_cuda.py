"""The CUDA path: the same code on the GPU gives the CPU's results (skipped without a CUDA GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gala_engine import gala, to_cpu, transform_points_target_to_source
from gala_engine.lddmm import run_lddmm
from gala_engine.search import BatchedFitness, fill_gene_space

from .synth import make_pair, median_error_target_px

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")]


@pytest.fixture(scope="module")
def pair(dapi_small):
    return make_pair(dapi_small, 37, 0.8, -0.6, n_cells=3000)


def test_batched_fitness_on_cuda_equals_cpu(pair):
    space = fill_gene_space(None, pair.xI, pair.xJ, mode="compatible")
    pop = torch.tensor(np.random.default_rng(0).uniform(space.low, space.high, (257, 5)))
    scores = {}
    for device in ("cpu", "cuda"):
        I = torch.as_tensor(pair.I / pair.I.max(), dtype=torch.float32, device=device)
        J = torch.as_tensor(pair.J / pair.J.max(), dtype=torch.float32, device=device)
        for kind in ("ncc", "ncc_support", "sse"):
            fit = BatchedFitness(I, pair.xI, J, pair.xJ, kind=kind, scale_floor=space.scale_floor)
            scores[device, kind] = fit(pop.to(device)).cpu()
            assert fit(pop.to(device)).device.type == device
    for kind in ("ncc", "ncc_support", "sse"):
        assert torch.allclose(scores["cpu", kind], scores["cuda", kind], rtol=1e-3, atol=1e-4)


def test_lddmm_on_cuda_follows_cpu(pair):
    out = {}
    for device in ("cpu", "cuda"):
        I = torch.as_tensor(pair.I / pair.I.max(), dtype=torch.float32, device=device)
        J = torch.as_tensor(pair.J / pair.J.max(), dtype=torch.float32, device=device)
        A = torch.as_tensor(pair.A, dtype=torch.float32, device=device)
        out[device] = run_lddmm(I, pair.xI, J, pair.xJ, A, num_iterations=20)
    e_cpu, e_gpu = np.array(out["cpu"].energy_history), np.array(out["cuda"].energy_history)
    assert out["cuda"].v.device.type == "cuda"
    assert np.allclose(e_cpu, e_gpu, rtol=1e-3)  # grid_sample's CUDA backward is not bit-exact


def test_gala_on_cuda_matches_cpu_within_a_fraction_of_a_pixel(pair):
    kw = dict(num_generations=30, num_iterations=20, ga_restarts=1, random_seed=1)
    results = {d: to_cpu(gala(pair.xI, pair.I, pair.xJ, pair.J, device=d, **kw)) for d in ("cpu", "cuda")}
    assert results["cuda"]["device"].startswith("CUDA")
    mapped = {d: transform_points_target_to_source(r["xv"], r["v"], r["A"], pair.cells_um) for d, r in results.items()}
    assert median_error_target_px(pair, mapped["cuda"]) < 1.0
    spread = np.median(np.linalg.norm(mapped["cuda"] - mapped["cpu"], axis=1))
    assert spread < 0.5  # image pixels: same optimum on both devices


def test_nuclei_fit_on_cuda_follows_cpu():
    """The cell-level refinement (gala_engine.nuclei_fit) on the GPU: the same decision, the cells landing within a
    quarter pixel of the CPU's (the fits' best steps may differ by one: grid_sample's CUDA backward is not bit-exact)."""
    from gala_engine.nuclei_fit import fit_to_nuclei

    from .test_nuclei_fit import _nuclei_image, _setup

    nmap, centres = _nuclei_image(np.random.default_rng(0))
    A, v, xv, yx_um = _setup(centres, wobble_px=2.5)
    fields = {d: fit_to_nuclei(A, v, xv, yx_um, nmap, device=d) for d in ("cpu", "cuda")}
    assert fields["cpu"][1]["accepted"] and fields["cuda"][1]["accepted"]
    landed = {d: transform_points_target_to_source(xv, f[0], A, yx_um) for d, f in fields.items()}
    assert np.median(np.linalg.norm(landed["cpu"] - landed["cuda"], axis=1)) < 0.25
