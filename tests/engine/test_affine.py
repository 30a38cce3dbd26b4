"""Genes ⇄ matrix, batched vs per-solution fitness, parameter validation."""

from __future__ import annotations

import numpy as np
import pygad
import pytest
import torch
import torch.nn.functional as F

from gala_engine import AlignParams, GalaInputError, image_feature, normalize, rasterize
from gala_engine.affine import (
    genes_to_matrix,
    genes_to_matrix_np,
    genes_to_theta,
    grid_centre,
    grid_points,
    matrix_to_genes,
    sample,
)
from gala_engine.search import BatchedFitness, _PopulationGA, fill_gene_space, refine_genes, run_ga, score_batch

XI = [np.arange(50.0), np.arange(80.0)]
XJ = [np.linspace(-300, 300, 40), np.linspace(0, 900, 60)]


@pytest.mark.parametrize("genes", [[0, 1, 1, 0, 0], [37.5, 0.8, -0.6, 12.0, -40.0], [-135.0, 2.0, 1.5, -3.0, 7.0],
                                   [90.0, 0.5, -0.5, 100.0, 250.0], [180.0, 1.0, 1.0, 0.0, 0.0]])
def test_genes_matrix_round_trip(genes):
    A = genes_to_matrix_np(genes, XI, XJ)
    back = matrix_to_genes(A, XI, XJ)
    assert np.allclose(genes_to_matrix_np(back, XI, XJ), A, atol=1e-9)
    assert back[1] > 0  # canonical form: (θ, sy, sx) ≡ (θ ± 180°, −sy, −sx)
    if genes[1] > 0:
        assert np.allclose(back, genes, atol=1e-9) or np.isclose(abs(back[0]), 180.0)


def test_matrix_maps_source_centre_to_target_centre_plus_shift():
    A = genes_to_matrix_np([33.0, 2.0, -1.0, 5.0, 7.0], XI, XJ)
    cI = np.array([XI[0].mean(), XI[1].mean(), 1.0])
    cJ = np.array([XJ[0].mean(), XJ[1].mean()])
    assert np.allclose((A @ cI)[:2], cJ + [5.0, 7.0])


def _rasters(dapi):
    YI, XI_, I = image_feature(dapi, reduce=8)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 400, 500), rng.uniform(0, 300, 500)
    XJ_, YJ, J = rasterize(x, y, dx=10.0)
    return (torch.tensor(normalize(I)), [YI, XI_], torch.tensor(normalize(J), dtype=torch.float32), [YJ, XJ_])


@pytest.mark.parametrize("kind", ["ncc", "sse"])
def test_batched_fitness_equals_per_solution_fitness(dapi_small, kind):
    I, xI, J, xJ = _rasters(dapi_small)
    space = fill_gene_space(None, xI, xJ, mode="compatible")
    fit = BatchedFitness(I, xI, J, xJ, kind=kind, scale_floor=space.scale_floor)
    rng = np.random.default_rng(3)
    pop = torch.tensor(rng.uniform(space.low, space.high, (32, 5)))
    batched = fit(pop)
    single = torch.cat([fit(pop[i : i + 1]) for i in range(32)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert batched.std() > 0  # the population really differs


def test_ncc_is_one_for_identical_rasters_and_ignores_intensity_scale():
    J = torch.rand(1, 20, 30)
    assert score_batch(J[None], J).item() == pytest.approx(1.0, abs=1e-5)
    assert score_batch(3 * J[None] + 1, J).item() == pytest.approx(1.0, abs=1e-5)


def test_pygad_runs_with_the_gene_space_we_fill():
    space = fill_gene_space([{}, {"low": 0.5}, {}, {"low": 0.0, "high": 0.0}, {}], XI, XJ)
    assert space.low[1] == 0.5 and space.low[3] == space.high[3] == 0.0
    ga = pygad.GA(num_generations=2, num_parents_mating=2, sol_per_pop=4, num_genes=5,
                  gene_space=space.as_dicts(), fitness_func=lambda ga, s, i: 0.0, suppress_warnings=True)
    ga.run()


@pytest.mark.parametrize(
    "gene_space, message",
    [([{}] * 4, "list of 5 dicts"), ([{}, {"low": 2.0, "high": 1.0}, {}, {}, {}], "greater than"),
     ("angles", "list of 5 dicts"), ([{}, {}, {}, {}, 3], "must be a dict")],
)
def test_bad_gene_space_raises(gene_space, message):
    with pytest.raises(GalaInputError, match=message):
        fill_gene_space(gene_space, XI, XJ)


def test_params_validate_and_round_trip():
    p = AlignParams(num_generations=10, a=30.0)
    assert AlignParams.from_dict(p.to_dict()) == p
    with pytest.raises(GalaInputError, match="Unknown parameter"):
        AlignParams.from_dict({"num_generation": 10})
    with pytest.raises(GalaInputError, match="fitness must be one of"):
        AlignParams(fitness="mse")
    with pytest.raises(GalaInputError, match="sol_per_pop"):
        AlignParams(sol_per_pop=1)


def _resampled(I: torch.Tensor, xI: list, A: torch.Tensor, xJ: list, padding: str) -> torch.Tensor:
    """The slow, physical reference: each source sampled where A⁻¹ sends J's pixel centres → (P, C, H, W)."""
    pts = grid_points(xJ, dtype=A.dtype)
    out = []
    for Ap in A:
        Ainv = torch.linalg.inv(Ap)
        out.append(sample(I.to(A.dtype), xI, pts @ Ainv[:2, :2].T + Ainv[:2, 2], padding=padding))
    return torch.stack(out)


@pytest.mark.parametrize("shift", [(0.0, 0.0, 0.0, 0.0), (-2.5, -3.0, -75.0, 40.0)])
def test_theta_from_genes_samples_where_the_inverse_matrix_sends_the_target_pixels(shift):
    """The GA's closed-form 2×3 matrices sample at A⁻¹·y — also when the genes' centres are not the grids'
    midpoints (a pooled GA level keeps the full grids' centres)."""
    I = torch.rand(2, 50, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    genes = torch.tensor([[37.5, 0.8, -0.6, 12.0, -40.0], [-135.0, 2.0, 1.5, -3.0, 7.0], [0.0, 1.0, 1.0, 0.0, 0.0]],
                         dtype=torch.float64)
    cI = torch.tensor(grid_centre(XI) + shift[:2])
    cJ = torch.tensor(grid_centre(XJ) + shift[2:])
    theta = genes_to_theta(genes, XI, XJ, cI, cJ)
    H, W = len(XJ[0]), len(XJ[1])
    grid = F.affine_grid(theta, [3, 2, H, W], align_corners=True)
    fast = F.grid_sample(I.expand(3, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    assert torch.allclose(fast, _resampled(I, XI, genes_to_matrix(genes, cI, cJ), XJ, "zeros"), atol=1e-10)


def test_support_fitness_resamples_only_the_cells_support(dapi_small):
    I, xI, J, xJ = _rasters(dapi_small)
    support = BatchedFitness(I, xI, J, xJ, kind="ncc_support", scale_floor=0.0)
    whole = BatchedFitness(I, xI, J, xJ, kind="ncc", scale_floor=0.0)
    n_support = int((J.sum(0) > 0.02 * J.sum(0).max()).sum())
    assert support._points.shape[1] == n_support < whole._points.shape[1] == J[0].numel()


@pytest.mark.parametrize("kind", ["ncc", "ncc_support", "sse"])
def test_fitness_does_not_depend_on_the_chunk_size_and_matches_score_batch(dapi_small, kind):
    I, xI, J, xJ = _rasters(dapi_small)
    I = I.float()
    space = fill_gene_space(None, xI, xJ, mode="compatible")
    pop = torch.tensor(np.random.default_rng(4).uniform(space.low, space.high, (13, 5)))
    scores = [BatchedFitness(I, xI, J, xJ, kind=kind, scale_floor=space.scale_floor, chunk=c)(pop) for c in (1, 4, 64)]
    assert torch.allclose(scores[0], scores[1], atol=1e-6) and torch.allclose(scores[0], scores[2], atol=1e-6)
    fit = BatchedFitness(I, xI, J, xJ, kind=kind, scale_floor=0.0)
    A = genes_to_matrix(pop, fit.cI.double(), fit.cJ.double())
    reference = score_batch(_resampled(I, xI, A, xJ, fit.padding), J.double(), kind)
    assert torch.allclose(fit(pop).double(), reference, atol=1e-5)


def test_vectorised_ga_operators_stay_in_range_are_seeded_and_patience_stops_early():
    space = fill_gene_space(None, XI, XJ, mode="compatible")
    target = torch.tensor([20.0, 1.0, 1.0, 10.0, -10.0], dtype=torch.float64)

    class Quadratic:  # a smooth fitness with its optimum inside the space; records what it scored
        I = torch.zeros(1)
        seen: list = []

        def __call__(self, genes):
            self.seen.append(genes.clone())
            return -(((genes - target) / torch.tensor(space.high - space.low)) ** 2).sum(1)

    kw = dict(num_generations=60, sol_per_pop=20, num_parents_mating=10, random_seed=3, operators="vectorized")
    a, b = run_ga(Quadratic(), space, **kw), run_ga(Quadratic(), space, **kw)
    assert np.array_equal(a.genes, b.genes) and a.best_history == b.best_history
    genes = torch.cat(Quadratic.seen).numpy()
    assert (genes >= space.low - 1e-9).all() and (genes <= space.high + 1e-9).all()
    assert a.fitness > run_ga(Quadratic(), space, **{**kw, "num_generations": 1}).fitness
    short = run_ga(Quadratic(), space, **{**kw, "num_generations": 1000, "patience": 5})
    assert len(short.best_history) < 1000
    assert all(short.best_history[-1] == h for h in short.best_history[-5:])
    with pytest.raises(GalaInputError, match="operators"):
        run_ga(Quadratic(), space, **{**kw, "operators": "fast"})


def test_population_ga_runs_exactly_as_pygad_with_the_same_operators():
    """One fitness call per generation for the whole population (elites re-scored, no per-value checks) must not
    change the GA: with pygad's own operators every generation is identical."""
    space = fill_gene_space(None, XI, XJ, mode="compatible")
    target = np.array([20.0, 1.0, 1.0, 10.0, -10.0])

    def fitness(_ga, solutions, _idx):
        return -((np.atleast_2d(solutions) - target) ** 2 / (space.high - space.low) ** 2).sum(1)

    kw = dict(num_generations=40, num_parents_mating=10, sol_per_pop=20, num_genes=5, gene_space=space.as_dicts(),
              fitness_func=fitness, fitness_batch_size=20, mutation_probability=0.2, crossover_probability=0.8,
              random_seed=7, suppress_warnings=True)
    runs = []
    for cls in (pygad.GA, _PopulationGA):
        ga = cls(**kw)
        ga.run()
        runs.append(ga)
    assert np.array_equal(runs[0].population, runs[1].population)
    assert np.array_equal(runs[0].best_solutions_fitness, runs[1].best_solutions_fitness)
    assert runs[1].num_fitness_evaluations == 20 * 41  # every solution of every generation, in one call each


def test_refinement_reports_every_step_in_order_and_ends_on_its_result(dapi_small):
    I, xI, J, xJ = _rasters(dapi_small)
    space = fill_gene_space(None, xI, xJ, mode="compatible")
    fit = BatchedFitness(I.float(), xI, J.float(), xJ, kind="ncc", scale_floor=space.scale_floor)
    events = []
    genes, score = refine_genes(fit, np.array([5.0, 1.0, 1.0, 2.0, -2.0]), space, iterations=12,
                                progress=events.append)
    assert [e.step for e in events] == list(range(1, 13))
    assert events[-1].value == pytest.approx(score) and np.allclose(events[-1].genes, genes)
    assert all(b.value >= a.value for a, b in zip(events, events[1:]))  # the best so far never drops


def test_multichannel_fitness_is_contrast_invariant_non_negative_and_one_channel_is_ncc():
    g = torch.Generator().manual_seed(0)
    J = torch.rand(1, 24, 32, generator=g, dtype=torch.float64)
    noise = torch.rand(1, 24, 32, generator=g, dtype=torch.float64)
    one = 0.7 * J + 0.3 * noise
    ncc = torch.corrcoef(torch.stack([one.flatten(), J.flatten()]))[0, 1]
    assert score_batch(one[None], J).item() == pytest.approx(ncc.item(), abs=1e-6)  # one channel: NCC
    # J is any positive mix of the channels plus an offset: a perfect fit, whatever the contrast
    parts = torch.cat([J + noise, J - noise])  # J = (first + second) / 2
    assert score_batch(one[None], J).item() < 0.99
    assert score_batch((parts * torch.tensor([2.0, 0.5])[:, None, None] + 3.0)[None], J).item() == pytest.approx(1.0, abs=1e-5)
    # an anti-correlated channel cannot be used with a negative weight (the mix is non-negative)
    with_negative = torch.cat([one, -J])
    assert score_batch(with_negative[None], J).item() == pytest.approx(ncc.item(), abs=1e-6)


def test_empty_slide_is_told_from_an_image_filled_with_tissue():
    from gala_engine.search import shows_glass

    tissue_everywhere = np.random.default_rng(0).uniform(0.3, 1.0, (1, 40, 40))
    on_glass = tissue_everywhere.copy()
    on_glass[:, :, :12] = 0.0  # 30 % empty slide
    assert shows_glass(on_glass) and not shows_glass(tissue_everywhere)
