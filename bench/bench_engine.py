"""GALA Studio engine benchmark: GA generations/s (batched vs per-solution pygad), LDDMM iterations/s,
the seed-sized workload per stage, and (``--full``) a scaling table.

Run from the repository root with the project's environment::

    python bench/bench_engine.py            # --quick (default): reduced work, < 2 min on a 2-core CPU
    python bench/bench_engine.py --full     # tutorial-sized seed run + scaling table (long on a CPU)
    python bench/bench_engine.py --device cuda

Every ratio is against a baseline run in the same process on the same inputs. Nothing here asserts a
timing; see bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# benchmark the checkout this file lives in, even where another checkout is installed (editable) in the env
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pygad  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import gala_engine  # noqa: E402
from gala_engine import gala, image_feature, normalize, rasterize, transform_points_target_to_source  # noqa: E402
from gala_engine.affine import genes_to_matrix, grid_centre, grid_points, sample  # noqa: E402
from gala_engine.device import device_name, resolve_device  # noqa: E402
from gala_engine.features import tissue_extent  # noqa: E402
from gala_engine.io import LoadedImage  # noqa: E402
from gala_engine.lddmm import run_lddmm  # noqa: E402
from gala_engine.params import AlignParams  # noqa: E402
from gala_engine.search import (  # noqa: E402
    SUPPORT_LEVEL,
    BatchedFitness,
    blur_raster,
    fill_gene_space,
    pool_raster,
    run_ga,
    score_batch,
)
from gala_engine.section import default_image_reduce  # noqa: E402

HE_IMAGE = Path(__file__).resolve().parents[1] / "gala_engine" / "demo_data" / "visium_tiny" / "tissue_lowres_image.png"
HE_CROP = (slice(110, 530), slice(100, 530))  # the tissue inside the Visium fiducial frame
SEED_CELLS = 167_780  # the published breast section
SEED_WIDTH, SEED_HEIGHT = 2000, 1500
SEED_UM_PER_PX = 5.0  # 2000 px ≈ 10 mm of tissue
DX = 30.0
# the known transform of the synthetic section: pixels → µm, rotation + flip + anisotropic scale + shift
TRUE_ANGLE, TRUE_SY, TRUE_SX, TRUE_SHIFT = 37.0, 1.0, -0.93, (1200.0, -800.0)
TUTORIAL = dict(epV=10.0, a=20.0, sigmaR=5e4, random_seed=42)


# ---------------------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory (MiB) since the last reset (VmHWM), else since process start."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt_s(seconds: float) -> str:
    return f"{seconds:8.3f} s"


def header(title: str) -> None:
    print()
    print(f"== {title} " + "=" * max(0, 94 - len(title)))


# ------------------------------------------------------------------------------------- synthetic data


@dataclass
class Section:
    cells_px: np.ndarray  # (N, 2) true (row, col) in image pixels
    cells_um: np.ndarray  # (N, 2) observed (row, col) in µm
    image: LoadedImage
    um_per_px: float


def _base_image() -> np.ndarray:
    rgb = cv2.cvtColor(cv2.imread(str(HE_IMAGE), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return rgb[HE_CROP]


def true_matrix(um_per_px: float) -> np.ndarray:
    theta = np.deg2rad(TRUE_ANGLE)
    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    A = np.eye(3)
    A[:2, :2] = R @ np.diag([TRUE_SY * um_per_px, TRUE_SX * um_per_px])
    A[:2, 2] = TRUE_SHIFT
    return A


def make_section(n_cells: int, width: int, *, um_per_px: float, seed: int = 0) -> Section:
    """An H&E-like image of ``width`` px (4:3) upsampled from the bundled Visium H&E, and ``n_cells``
    cells drawn where the tissue is dark, mapped into µm by a known transform."""
    base = _base_image()
    height = int(round(width * 3 / 4))
    pixels = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
    image = LoadedImage(pixels.astype(np.float32) / 255.0, 1.0, (height, width), "synthetic")
    gray = base.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    prob = np.clip(gray.max() - gray - 10.0, 0.0, None) ** 2
    rng = np.random.default_rng(seed)
    idx = rng.choice(prob.size, n_cells, p=prob.ravel() / prob.sum())
    base_rc = np.stack([idx // base.shape[1], idx % base.shape[1]], 1) + rng.uniform(-0.5, 0.5, (n_cells, 2))
    fy, fx = height / base.shape[0], width / base.shape[1]
    cells_px = (base_rc + 0.5) * np.array([fy, fx]) - 0.5
    A = true_matrix(um_per_px)
    cells_um = cells_px @ A[:2, :2].T + A[:2, 2]
    return Section(cells_px, cells_um, image, um_per_px)


@dataclass
class Rasters:
    xI: list
    I: np.ndarray
    xJ: list
    J: np.ndarray
    reduce: int
    t_rasterize: float
    t_feature: float


def make_rasters(section: Section) -> Rasters:
    t0 = time.perf_counter()
    XJ, YJ, J = rasterize(section.cells_um[:, 1], section.cells_um[:, 0], dx=DX)
    t1 = time.perf_counter()
    reduce = default_image_reduce(section.image, J.shape)
    YI, XI, I = image_feature(section.image.pixels, reduce=reduce, scale=section.image.scale)
    t2 = time.perf_counter()
    return Rasters([YI, XI], I, [YJ, XJ], normalize(J).astype(np.float32), reduce, t1 - t0, t2 - t1)


# ------------------------------------------------------------------------------------------ 1. GA


def per_solution_fitness_factory(I: torch.Tensor, xI: list, J: torch.Tensor, xJ: list, scale_floor: float,
                                 kind: str):
    """The straightforward baseline: pygad calls this once per solution; one affine in numpy, one grid_sample
    of the whole target grid, one NCC (over the cells' support for ``"ncc_support"``), one Python float back.
    Same score as ``BatchedFitness(kind=kind, max_anisotropy=None)``."""
    dtype, device = I.dtype, I.device
    rows = torch.as_tensor(np.asarray(xJ[0]), dtype=dtype, device=device)
    cols = torch.as_tensor(np.asarray(xJ[1]), dtype=dtype, device=device)
    target = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1)  # (H, W, 2) (row, col)
    lo = torch.tensor([xI[0][0], xI[1][0]], dtype=dtype, device=device)
    hi = torch.tensor([xI[0][-1], xI[1][-1]], dtype=dtype, device=device)
    cI, cJ = grid_centre(xI), grid_centre(xJ)
    total = J.sum(0)
    mask = total > SUPPORT_LEVEL * total.max() if kind == "ncc_support" else torch.ones_like(total, dtype=torch.bool)
    j = J[:, mask].flatten()
    j = j - j.mean()
    jj = (j * j).sum()

    def fitness_func(_ga, solution, _idx):
        angle, sy, sx, ty, tx = (float(g) for g in solution)
        if abs(sy) < scale_floor or abs(sx) < scale_floor:
            return -1.0
        t = math.radians(angle)
        L = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) @ np.diag([sy, sx])
        A = np.eye(3)
        A[:2, :2], A[:2, 2] = L, np.array([ty, tx]) + cJ - L @ cI
        Ainv = torch.as_tensor(np.linalg.inv(A), dtype=dtype, device=device)
        pts = target @ Ainv[:2, :2].T + Ainv[:2, 2]
        grid = ((pts - lo) / (hi - lo) * 2.0 - 1.0).flip(-1)
        with torch.no_grad():
            AI = F.grid_sample(I[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
            a = AI[0][:, mask].flatten()
            a = a - a.mean()
            return float((a @ j) / (torch.sqrt((a * a).sum() * jj) + 1e-12))

    return fitness_func


class LegacyBatchedFitness(BatchedFitness):
    """The batched fitness as it was before issue 6 (commit 54aad7b), kept here for a before/after figure:
    (P, H, W, 2) physical coordinates by einsum, normalised and flipped in separate passes, one
    grid_sample over the whole population, NCC over (P, H·W) tensors."""

    def __call__(self, genes: torch.Tensor) -> torch.Tensor:
        genes = genes.to(self.I.dtype)
        ok = (genes[:, 1].abs() >= self.scale_floor) & (genes[:, 2].abs() >= self.scale_floor)
        safe = genes.clone()
        safe[~ok, 1:3] = 1.0
        Ainv = torch.linalg.inv(genes_to_matrix(safe, self.cI, self.cJ))
        target = grid_points(self.xJ, dtype=self.I.dtype, device=self.I.device)
        pts = torch.einsum("pij,hwj->phwi", Ainv[:, :2, :2], target) + Ainv[:, None, None, :2, 2]
        P, H, W = pts.shape[:3]
        out = sample(self.I, self.xI, pts.reshape(P * H, W, 2), self.padding)
        score = score_batch(out.reshape(self.I.shape[0], P, H, W).transpose(0, 1), self.J, self.kind)
        worst = torch.tensor(0.0 if self.kind == "sse" else -1.0, dtype=score.dtype, device=score.device)
        return torch.where(ok, score, worst)


def _best_rate(fn, reps: int, device: torch.device) -> float:
    """Calls per second of ``fn`` from the fastest of ``reps`` calls (a shared CPU adds noise, never speed)."""
    fn()
    best = math.inf
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 1.0 / best


GA_KIND = AlignParams().fitness  # gala()'s default fitness


def ga_level(label: str, I: torch.Tensor, xI: list, J: torch.Tensor, xJ: list, space, *, generations: int,
             pop: int, device: torch.device) -> dict:
    batched = BatchedFitness(I, xI, J, xJ, kind=GA_KIND, scale_floor=space.scale_floor)
    legacy = LegacyBatchedFitness(I, xI, J, xJ, kind=GA_KIND, scale_floor=space.scale_floor)
    plain = per_solution_fitness_factory(I, xI, J, xJ, space.scale_floor, GA_KIND)

    def batch_of_one(_ga, solution, _idx):
        with torch.no_grad():
            return float(batched(torch.as_tensor(np.asarray(solution, dtype=np.float64)[None], device=device))[0])

    # all fitnesses compute the same score
    rng = np.random.default_rng(1)
    probe = rng.uniform(space.low, space.high, size=(16, 5))
    with torch.no_grad():
        b = batched(torch.as_tensor(probe, device=device)).double().cpu().numpy()
        old = legacy(torch.as_tensor(probe, device=device)).double().cpu().numpy()
    s = np.array([plain(None, g, i) for i, g in enumerate(probe)])
    agree = float(max(np.max(np.abs(b - s)), np.max(np.abs(b - old))))

    # fitness alone (no pygad): one population per call
    pop_t = torch.as_tensor(rng.uniform(space.low, space.high, size=(pop, 5)), device=device)
    population = pop_t.cpu().numpy()
    reps = 5 if generations >= 10 else 3
    with torch.no_grad():
        evals = {
            "batched": _best_rate(lambda: batched(pop_t).double().cpu().numpy(), reps, device),
            "legacy": _best_rate(lambda: legacy(pop_t).double().cpu().numpy(), reps, device),
            "one": _best_rate(lambda: [batch_of_one(None, g, i) for i, g in enumerate(population)], reps, device),
            "plain": _best_rate(lambda: [plain(None, g, i) for i, g in enumerate(population)], reps, device),
        }

    def best_of(run, repeats: int = 3):
        """Highest gen/s of ``repeats`` identical seeded runs (other jobs on a shared CPU only slow a run)."""
        best_rate, best_fit = 0.0, None
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            best_fit = run()
            sync(device)
            best_rate = max(best_rate, generations / (time.perf_counter() - t0))
        return best_rate, best_fit

    def timed_run_ga(fitness, operators):
        return best_of(lambda: run_ga(fitness, space, num_generations=generations, sol_per_pop=pop,
                                      num_parents_mating=pop // 2, random_seed=42, operators=operators).fitness)

    def timed_pygad(fitness_func):
        def run():
            ga = pygad.GA(num_generations=generations, num_parents_mating=pop // 2, sol_per_pop=pop, num_genes=5,
                          gene_space=space.as_dicts(), fitness_func=fitness_func, fitness_batch_size=None,
                          mutation_probability=0.2, crossover_probability=0.8, random_seed=42,
                          suppress_warnings=True)
            ga.run()
            return float(np.max(ga.best_solutions_fitness))

        return best_of(run)

    runs = {
        "ours": timed_run_ga(batched, "vectorized"),
        "ours_pygad_ops": timed_run_ga(batched, "pygad"),
        "before": timed_run_ga(legacy, "pygad"),
        "one": timed_pygad(batch_of_one),
        "plain": timed_pygad(plain),
    }
    return dict(label=label, shape_I=tuple(I.shape[1:]), shape_J=tuple(J.shape[1:]), generations=generations,
                evals=evals, runs=runs, agree=agree)


GA_VARIANTS = [
    ("ours", "run_ga(BatchedFitness), vectorised operators [gala() default]"),
    ("ours_pygad_ops", "run_ga(BatchedFitness), pygad's operators [tutorial()]"),
    ("before", "before #6: batched fitness at 54aad7b, pygad ops"),
    ("one", "per-solution pygad: same fitness code, batch of 1"),
    ("plain", "per-solution pygad: straightforward fitness_func"),
]


def bench_ga(r: Rasters, *, generations_full: int, generations_level: int, pop: int, device: torch.device,
             dtype: torch.dtype) -> None:
    header(f"1. GA generations/s: batched population vs per-solution pygad loops (population {pop}, fitness {GA_KIND!r})")
    I = torch.as_tensor(r.I, dtype=dtype, device=device)
    J = torch.as_tensor(r.J, dtype=dtype, device=device)
    space = fill_gene_space(None, r.xI, r.xJ, mode="extent", source_extent=tissue_extent(r.I, r.xI))
    fI = max(1, math.ceil(max(r.I.shape[1:]) / 64))
    fJ = max(1, math.ceil(max(r.J.shape[1:]) / 64))
    I_c, xI_c = pool_raster(I, r.xI, fI)
    J_c, xJ_c = pool_raster(J, r.xJ, fJ)
    levels = [
        ga_level("GA level: pooled ≤64 px + blur, as gala() runs it", blur_raster(I_c, 1.5), xI_c,
                 blur_raster(J_c, 1.5), xJ_c, space, generations=generations_level, pop=pop, device=device),
        ga_level("full rasters of the seed workload", I, r.xI, J, r.xJ, space, generations=generations_full, pop=pop,
                 device=device),
    ]
    fit_names = {"batched": "BatchedFitness, whole population", "legacy": "before #6 (54aad7b), whole population",
                 "one": "same code, 100 calls of batch 1", "plain": "straightforward, 100 single calls"}
    for lv in levels:
        print(f"\n{lv['label']}: source I {'×'.join(map(str, lv['shape_I']))}, target J "
              f"{'×'.join(map(str, lv['shape_J']))}, {lv['generations']} generations; fitnesses agree to "
              f"{lv['agree']:.1e}")
        print(f"  {'GA (pygad) variant':58s} {'gen/s':>8s} {'ms/gen':>8s} {'ours is':>8s} {'best fit':>9s}")
        ours = lv["runs"]["ours"][0]
        for key, name in GA_VARIANTS:
            rate, best = lv["runs"][key]
            print(f"  {name:58s} {rate:8.2f} {1000 / rate:8.2f} {ours / rate:7.1f}× {best:9.4f}")
        print(f"  {'fitness only (no pygad)':58s} {'pop/s':>8s} {'ms/pop':>8s} {'ours is':>8s}")
        for key, name in fit_names.items():
            rate = lv["evals"][key]
            print(f"  {name:58s} {rate:8.2f} {1000 / rate:8.2f} {lv['evals']['batched'] / rate:7.1f}×")
    print("\nAll GA variants: same rasters, population, generations, parents, crossover/mutation probabilities and\n"
          "  seed. 'ours is': our gen/s (or pop/s) divided by that row's. The per-solution rows are pygad with\n"
          "  fitness_batch_size=None and pygad's operators. Every rate is the best of 3 identical seeded GA runs\n"
          "  (fitness only: of a few repeats), so jobs sharing the CPU distort the ratios less.\n"
          "  'best fit' is one GA run's outcome, which depends on its random path: other operators draw other\n"
          "  numbers, and fitness rounding differences (≤ 'agree') change pygad's picks among near-ties after\n"
          "  enough generations. A single run can end in another basin; gala() adds restarts and a pose scan.")


# --------------------------------------------------------------------------------------- 2. LDDMM


def common_energy(I: torch.Tensor, xI: list, J: torch.Tensor, xJ: list, A: torch.Tensor, v: torch.Tensor, xv: list,
                  *, a: float, sigmaM: float, sigmaR: float, p: float = 2.0) -> tuple[float, float]:
    """One yardstick for both LDDMM results: the matching energy with the initial (uniform 0.5) weights and
    the least-squares linear contrast, Σ 0.5 (c0 + c1·AI − J)² / (2σM²), and the regularisation energy
    (the same formula in both codes). AI samples I, in float64, where the engine's exported backward map of
    (A, v) (``transform_points_target_to_source``) sends J's grid."""
    from gala_engine.lddmm import smoothing_operator

    dd = torch.float64
    I, J, A, v = I.to(dd).cpu(), J.to(dd).cpu(), A.to(dd).cpu(), v.to(dd).cpu()
    xv = [np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64) for x in xv]
    AI = sample(I, xI, transform_points_target_to_source(xv, v, A, grid_points(xJ, dtype=dd)), padding="border")
    design = torch.stack([torch.ones_like(AI[0]).flatten(), AI[0].flatten()], 1)
    coef = torch.linalg.lstsq(design, J[0].flatten()[:, None]).solution
    EM = float((0.5 * (design @ coef - J[0].flatten()[:, None]) ** 2).sum() / (2 * sigmaM**2))
    LL = torch.as_tensor(smoothing_operator(xv, a, p), dtype=dd)
    dv = [x[1] - x[0] for x in xv]
    ER = float((torch.fft.fftn(v, dim=(1, 2)).abs() ** 2 * LL[None, :, :, None]).sum() * math.prod(dv)
               / (v.shape[1] * v.shape[2]) / (2 * sigmaR**2))
    return EM, ER


def bench_lddmm(r: Rasters, section: Section, um_per_px: float, *, iterations: int, device: torch.device, dtype: torch.dtype) -> None:
    header(f"2. LDDMM iterations/s: run_lddmm vs STalign (stalign-modern) LDDMM, {str(dtype).replace('torch.', '')}, "
           "affine fixed at the true pose")
    I = torch.as_tensor(r.I, dtype=dtype, device=device)
    J = torch.as_tensor(r.J, dtype=dtype, device=device)
    A = torch.as_tensor(true_matrix(um_per_px), dtype=dtype, device=device)
    a, nt = TUTORIAL["a"], 3
    sigmaM, sigmaB = float(r.I.std()), float(r.J.std())  # the tutorial's sigmaM=I.std(), sigmaB=J.std()
    params = dict(a=a, nt=nt, epV=TUTORIAL["epV"], sigmaR=TUTORIAL["sigmaR"], sigmaM=sigmaM, sigmaB=sigmaB)
    run_lddmm(I, r.xI, J, r.xJ, A, num_iterations=2, **params)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    ours = run_lddmm(I, r.xI, J, r.xJ, A, num_iterations=iterations, **params)
    sync(device)
    t_ours = time.perf_counter() - t0
    print(f"source I {r.I.shape[1]}×{r.I.shape[2]}, target J {r.J.shape[1]}×{r.J.shape[2]}, velocity grid "
          f"{ours.v.shape[1]}×{ours.v.shape[2]}×nt={nt}, {iterations} iterations, a={a}, p=2, epV={params['epV']}, "
          f"sigmaR={params['sigmaR']:g}, sigmaM=I.std()={sigmaM:.4g}, sigmaB=J.std()={sigmaB:.4g}, muB estimated")
    EM_o, ER_o = common_energy(I, r.xI, J, r.xJ, A, ours.v, ours.xv, a=a, sigmaM=sigmaM, sigmaR=params["sigmaR"])
    EM_0, ER_0 = common_energy(I, r.xI, J, r.xJ, A, torch.zeros_like(ours.v), ours.xv, a=a, sigmaM=sigmaM,
                               sigmaR=params["sigmaR"])
    print(f"common energy at the start (v = 0): {EM_0 + ER_0:.6g}")
    rows = [("GALA Studio run_lddmm", iterations / t_ours, t_ours, ours.energy_history[-1][1], EM_o, ER_o,
             cell_error_px(section, ours.xv, ours.v, A))]
    try:
        from STalign import STalign as reference
        from STalign import __version__ as reference_version
    except ImportError:
        reference = None
        print("STalign baseline skipped: `pip install -r bench/requirements-bench.txt` (stalign-modern) to compare.")
    if reference is not None:
        v0 = torch.zeros_like(ours.v)
        xv = [torch.as_tensor(x, dtype=dtype, device=device) for x in ours.xv]
        ref_kw = dict(A=A, v=v0, xv=xv, a=a, p=2.0, epL=0.0, epT=0.0, epV=params["epV"], sigmaM=sigmaM, sigmaB=sigmaB,
                      sigmaR=params["sigmaR"], device=device, dtype=dtype)
        reference.LDDMM(r.xI, I, r.xJ, J, niter=2, **ref_kw)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        ref = reference.LDDMM(r.xI, I, r.xJ, J, niter=iterations, **ref_kw)
        sync(device)
        t_ref = time.perf_counter() - t0
        EM_r, ER_r = common_energy(I, r.xI, J, r.xJ, ref["A"], ref["v"], ref["xv"], a=a, sigmaM=sigmaM,
                                   sigmaR=params["sigmaR"])
        rows.append((f"STalign.LDDMM (stalign-modern {reference_version})", iterations / t_ref, t_ref, float("nan"),
                     EM_r, ER_r, cell_error_px(section, ref["xv"], ref["v"], ref["A"])))
    print(f"{'implementation':42s} {'it/s':>7s} {'ms/it':>7s} {'time s':>7s} | {'own final E_M':>13s} | "
          f"{'common E_M':>11s} {'E_R':>9s} {'E_M+E_R':>11s} | {'cell err px':>11s}")
    for name, rate, t, own, EM, ER, err in rows:
        print(f"{name:42s} {rate:7.2f} {1000 / rate:7.1f} {t:7.2f} | {own:13.6g} | {EM:11.6g} {ER:9.3g} {EM + ER:11.6g} | "
              f"{err:11.2f}")
    if len(rows) == 2:
        drop = [(EM_0 + ER_0) - (row[4] + row[5]) for row in rows]
        print(f"ratio (ours / STalign): {rows[0][1] / rows[1][1]:.2f}× iterations/s; final common energy "
              f"{(rows[0][4] + rows[0][5]) / (rows[1][4] + rows[1][5]):.4f}× STalign's (< 1: ours lower); energy "
              f"lowered by {drop[0]:.6g} (ours) vs {drop[1]:.6g} (STalign)")
    print("Same I, J, A (fixed: STalign with epL=epT=0), velocity grid (STalign given v=0 on ours), nt, a, p, epV,\n"
          "  sigmaR, sigmaM, sigmaB, dtype and iteration count. 'common E_M' evaluates both final fields with one\n"
          "  formula (uniform weights 0.5, least-squares contrast); 'own final E_M' is run_lddmm's last reported\n"
          "  matching energy (its EM weights). Model differences the reference's API cannot switch off: STalign\n"
          "  has a third (artifact) EM class (sigmaA=5), E-steps every 5 iterations, a ridge-regularised contrast\n"
          "  fit and no step-size control; run_lddmm E-steps every iteration and halves epV when a step raises E.\n"
          "  'cell err px': median distance of all cells mapped back through (A, v) from their true image pixel;\n"
          f"  {cell_error_px(section, ours.xv, torch.zeros_like(ours.v), A):.2f} px with v = 0 (A is the true pose): "
          "any growth is the warp moving away from the truth.")


def cell_error_px(section: Section, xv: list, v: torch.Tensor, A: torch.Tensor) -> float:
    """Median distance (image px) of the section's cells mapped back through (A, v) from their true pixels."""
    pts = torch.as_tensor(section.cells_um, dtype=A.dtype, device=A.device)
    px = transform_points_target_to_source(xv, v, A, pts)
    px = px.detach().cpu().numpy() if isinstance(px, torch.Tensor) else np.asarray(px)
    return float(np.median(np.linalg.norm(px - section.cells_px, axis=1)))


# ---------------------------------------------------------------------------------- 3. seed workload


def run_workload(n_cells: int, width: int, *, um_per_px: float, params: dict, device: torch.device,
                 a: float | None = None, extra: dict | None = None) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    section = make_section(n_cells, width, um_per_px=um_per_px)
    t_synth = time.perf_counter() - t0
    reset_peak_rss()
    r = make_rasters(section)
    stage_t: dict[str, float] = {}
    last = [0.0]

    def progress(event) -> None:
        now = time.perf_counter()
        stage_t[event.stage] = stage_t.get(event.stage, 0.0) + now - last[0]
        last[0] = now

    I, J = r.I, r.J
    gene_space = [{}, {}, {}, {}, {}]
    sync(device)
    t_start = last[0] = time.perf_counter()
    resu = gala(r.xI, I, r.xJ, J, gene_space=gene_space, num_generations=params["num_generations"],
                num_iterations=params["num_iterations"], num_repeats=params["num_repeats"], epV=TUTORIAL["epV"],
                a=TUTORIAL["a"] if a is None else a, sigmaR=TUTORIAL["sigmaR"], sigmaM=float(I.std()),
                sigmaB=float(J.std()), random_seed=TUTORIAL["random_seed"], device=str(device), progress=progress,
                **(extra or {}))
    sync(device)
    t_gala = time.perf_counter() - t_start
    err_px = cell_error_px(section, resu["xv"], resu["v"], resu["A"])  # sanity: cells mapped back vs their source
    out = dict(cells=n_cells, width=width, height=section.image.pixels.shape[0], reduce=r.reduce,
               shape_I=tuple(I.shape[1:]), shape_J=tuple(J.shape[1:]), synth=t_synth, rasterize=r.t_rasterize,
               feature=r.t_feature, scan=stage_t.get("scan", 0.0), ga=stage_t.get("ga", 0.0), refine=stage_t.get("refine", 0.0),
               lddmm=stage_t.get("lddmm", 0.0), gala=t_gala,
               other=t_gala - sum(stage_t.values()), err_px=err_px, err_um=err_px * um_per_px,
               rss=peak_rss_mb(), cuda=(torch.cuda.max_memory_allocated(device) / 2**20
                                        if device.type == "cuda" else None))
    out["total"] = r.t_rasterize + r.t_feature + t_gala
    return out


def bench_seed(params: dict, mode: str, device: torch.device) -> None:
    header("3. Seed-sized workload: gala() end to end, the tutorial's call")
    print(f"{SEED_CELLS} synthetic cells at dx={DX:g} µm; {SEED_WIDTH}×{SEED_HEIGHT} H&E-like image (bundled Visium "
          f"H&E, upsampled) at {SEED_UM_PER_PX:g} µm/px; true pose angle={TRUE_ANGLE}°, flip, scale "
          f"({TRUE_SY * SEED_UM_PER_PX:g}, {TRUE_SX * SEED_UM_PER_PX:g}) µm/px")
    print(f"gala(..., num_generations={params['num_generations']}, num_iterations={params['num_iterations']}, "
          f"num_repeats={params['num_repeats']}, epV={TUTORIAL['epV']}, a={TUTORIAL['a']}, "
          f"sigmaR={TUTORIAL['sigmaR']:g}, sigmaM=I.std(), sigmaB=J.std(), random_seed={TUTORIAL['random_seed']})"
          + ("   [--quick: REDUCED generations/iterations/repeats; the tutorial is 1000/2000/2]"
             if mode == "quick" else "   [the tutorial's settings]"))
    print(f"other parameters: the engine defaults (3 GA restarts, {GA_KIND!r} fitness, refinement, contrast fit)")
    defaults = AlignParams()
    early = dict(ga_patience=defaults.ga_patience, lddmm_patience=defaults.lddmm_patience, lddmm_tol=defaults.lddmm_tol)
    off = dict(ga_patience=0, lddmm_patience=0)
    coarse = dict(lddmm_coarse=2)
    variants = [("every step", off), ("early stops [def.]", early), ("c2f, every step", {**off, **coarse}),
                ("c2f + early stops", {**early, **coarse})]
    run_workload(20_000, 500, um_per_px=SEED_UM_PER_PX, params=dict(params, num_generations=5, num_iterations=5,
                 num_repeats=1), device=device)  # warm-up: first calls of every kernel
    runs = [run_workload(SEED_CELLS, SEED_WIDTH, um_per_px=SEED_UM_PER_PX, params=params, device=device, extra=extra)
            for _, extra in variants]
    w = runs[0]
    print(f"target J {w['shape_J'][0]}×{w['shape_J'][1]} px; source I {w['shape_I'][0]}×{w['shape_I'][1]} px "
          f"(image reduce {w['reduce']}, default_image_reduce); input synthesis {w['synth']:.2f} s (not counted)")
    print("variants: every step = all generations and iterations, as published (ga_patience=0, lddmm_patience=0); "
          "early stops = gala()'s defaults " + ", ".join(f"{k}={v:g}" for k, v in early.items())
          + "; coarse-to-fine = " + ", ".join(f"{k}={v:g}" for k, v in coarse.items())
          + " (75 % of the LDDMM iterations on 2×-pooled rasters, then full resolution)")
    print(f"  {'stage':32s}" + "".join(f" {name:>17s}" for name, _ in variants))
    for name in ("rasterize", "feature", "scan", "ga", "refine", "lddmm", "other", "total"):
        label = {"rasterize": "rasterise (cells → J)", "feature": "feature (image → I)",
                 "scan": "pose scan (seeds the GA)", "ga": "GA", "refine": "affine refine", "lddmm": "LDDMM",
                 "other": "gala() setup / between stages", "total": "TOTAL"}[name]
        print(f"  {label:32s}" + "".join(f" {fmt_s(r[name]):>17s}" for r in runs))
    print(f"  {'faster than every step':32s}" + "".join(f" {w['total'] / r['total']:16.1f}×" for r in runs))
    print(f"  {'median error of cells, px':32s}" + "".join(f" {r['err_px']:17.2f}" for r in runs))
    print(f"peak RSS during the workload, every step: {w['rss']:.0f} MiB"
          + (f"; torch.cuda.max_memory_allocated: {w['cuda']:.0f} MiB" if w["cuda"] is not None else ""))
    print(f"error: median distance of the cells mapped back into the image from where they came from, in image px "
          f"({SEED_UM_PER_PX:g} µm; target pixel = {DX:g} µm)")


# ------------------------------------------------------------------------------------- 4. scaling


# the defaults before issue 11 (as parameters): inverted brightness for colour H&E, correlation over the cells'
# support, one LDDMM run on every pixel, no sub-pixel levels. (Zero padding and the multi-channel contrast model
# are not reverted.)
PRE_ISSUE_11 = dict(feature="inverted", fine_levels=0,
                    params=dict(fitness="ncc_support", lddmm_validate=False, count_scale="linear", epV=10.0))


DEFAULTS_REPEATS = 3  # runs of each configuration per workload in the defaults comparison (the fastest kept)


def _defaults_run(section: Section, *, feature: str, params: dict, device: torch.device,
                  fine_levels: int = 2, counts: np.ndarray | None = None) -> tuple[float, float, float]:
    """The CLI's path (prepare_section + align_section) on one section → (wall s, CPU s of this process, median
    cell error in px). ``counts``: each cell's total counts (default 1 each: constant)."""
    import anndata as ad

    from gala_engine.section import align_section, prepare_section

    counts = np.ones(len(section.cells_um)) if counts is None else counts
    adata = ad.AnnData(np.asarray(counts, dtype=np.float32)[:, None])
    adata.obsm["spatial"] = section.cells_um[:, ::-1].copy()
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    rasters = prepare_section(adata, section.image, feature=feature, fine_levels=fine_levels)
    result = align_section(rasters, AlignParams(device=str(device), **params))
    sync(device)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    err = cell_error_px(section, [torch.as_tensor(a) for a in result.xv], torch.as_tensor(result.v),
                        torch.as_tensor(result.A))
    return seconds, cpu, err


def bench_defaults(device: torch.device) -> None:
    """The default CLI run (today's defaults vs the defaults before issue 11, same process) on a 600-cell 512² case
    and the seed-sized section (issue 11's speed target: within 1.5×). On a CPU the ratio is of CPU seconds (the
    work done; wall time also counts whatever else shares the machine), wall seconds beside it."""
    header("Default CLI run: today's defaults vs the defaults before issue 11 (same process)")
    unit = "CPU" if device.type == "cpu" else "wall"
    print(f"{'workload':<34} {'today s':>8} {'before s':>9} {'ratio':>6} ({unit} s) {'wall s today/before':>20} "
          f"{'error px today/before':>22}")
    # the third row: counts that vary (lognormal library sizes), where count_scale="auto" aligns twice (linear and
    # log counts); the first two have constant counts, as the issue's speed target was measured
    for label, n, width, lognormal in (("600 cells, 512×384 image", 600, 512, False),
                                       (f"{SEED_CELLS:,} cells, {SEED_WIDTH}×{SEED_HEIGHT} image", SEED_CELLS, SEED_WIDTH,
                                        False),
                                       ("600 cells, varying counts", 600, 512, True)):
        section = make_section(n, width, um_per_px=SEED_UM_PER_PX * SEED_WIDTH / width)
        counts = np.random.default_rng(0).lognormal(7.0, 0.6, n) if lognormal else None
        # alternated and repeated, the fastest of each kept: the first run in a process pays one-off costs
        # (imports, torch's first kernels) that are not the defaults' — charged to whichever ran first, they
        # doubled the ratio on the small case
        runs: dict[str, list] = {"today": [], "before": []}
        for _ in range(DEFAULTS_REPEATS):
            runs["before"].append(_defaults_run(section, device=device, counts=counts, **PRE_ISSUE_11))
            runs["today"].append(_defaults_run(section, feature="auto", params={}, device=device, counts=counts))
        key = 1 if device.type == "cpu" else 0
        today, before = (min(runs[name], key=lambda r: r[key]) for name in ("today", "before"))
        print(f"{label:<34} {today[key]:>8.1f} {before[key]:>9.1f} {today[key] / before[key]:>5.2f}× {'':>8} "
              f"{today[0]:>9.1f} / {before[0]:<8.1f} {today[2]:>10.2f} / {before[2]:.2f}", flush=True)


def bench_scaling(params: dict, device: torch.device) -> None:
    header("4. Scaling: total time (rasterise + feature + gala) by cell count and image width")
    print(f"gala(num_generations={params['num_generations']}, num_iterations={params['num_iterations']}, "
          f"num_repeats={params['num_repeats']}, tutorial's epV/sigmaR/sigmaM/sigmaB, engine defaults otherwise)")
    print("cells: constant density (tissue area ∝ cells), image 2000 px wide; widths: 167,780 cells, same tissue, "
          "a scaled with the width (a = 20 px at 2000 px)")
    cols = (f"{'case':>20s} {'J':>9s} {'I':>9s} {'raster s':>9s} {'feature s':>9s} {'scan s':>7s} {'GA s':>7s} {'refine s':>8s} "
            f"{'LDDMM s':>8s} {'total s':>8s} {'RSS MiB':>8s}" + (f" {'CUDA MiB':>8s}" if device.type == "cuda" else "")
            + f" {'err µm':>7s} {'c2f total s':>11s} {'c2f err µm':>10s}")
    cases = [("cells", n, SEED_WIDTH) for n in (50_000, 170_000, 300_000, 1_000_000)]
    cases += [("width", SEED_CELLS, w) for w in (1000, 2000, 4000, 8000)]
    print(cols)
    for kind, n, width in cases:
        if kind == "cells":
            um_per_px = SEED_UM_PER_PX * math.sqrt(n / SEED_CELLS)
            a = TUTORIAL["a"]
            label = f"{n:,} cells"
        else:
            um_per_px = SEED_UM_PER_PX * SEED_WIDTH / width
            a = TUTORIAL["a"] * width / SEED_WIDTH
            label = f"width {width} px"
        w = run_workload(n, width, um_per_px=um_per_px, params=params, device=device, a=a)
        c = run_workload(n, width, um_per_px=um_per_px, params=params, device=device, a=a, extra={"lddmm_coarse": 2})
        print(f"{label:>20s} {'×'.join(map(str, w['shape_J'])):>9s} {'×'.join(map(str, w['shape_I'])):>9s} "
              f"{w['rasterize']:9.3f} {w['feature']:9.3f} {w['scan']:7.2f} {w['ga']:7.2f} {w['refine']:8.2f} {w['lddmm']:8.2f} "
              f"{w['total']:8.2f} {w['rss']:8.0f}" + (f" {w['cuda']:8.0f}" if w["cuda"] is not None else "")
              + f" {w['err_um']:7.1f} {c['total']:11.2f} {c['err_um']:10.1f}", flush=True)
    print("c2f: the same call with lddmm_coarse=2 (coarse-to-fine LDDMM: 75 % of the iterations on 2×-pooled rasters)")


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="reduced work, < 2 min on a 2-core CPU (default)")
    group.add_argument("--full", action="store_true", help="tutorial-sized seed run and the scaling table")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available; default)")
    parser.add_argument("--generations", type=int, help="override num_generations of every gala() run")
    parser.add_argument("--iterations", type=int, help="override num_iterations of every gala() run")
    parser.add_argument("--repeats", type=int, help="override num_repeats of every gala() run")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice, or 1 when "
                        "the load average exceeds the core count: oversubscribed threads stall)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: ga,lddmm,defaults,seed,scaling")
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    device = resolve_device(None if args.device == "auto" else args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    threads_note = "set by --threads"
    if args.threads is None and load > (os.cpu_count() or 1):
        # an oversubscribed CPU stalls torch's parallel regions (here: 30 ms for a 180k-element op
        # with 2 threads vs 0.06 ms with 1); one thread is the fast choice there
        args.threads = 1
        threads_note = f"auto: load average {load:.1f} > {os.cpu_count()} cores"
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        threads_note = "torch default"
    dtype = torch.float32
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    if mode == "quick":
        seed_params = dict(num_generations=100, num_iterations=100, num_repeats=1)
        scale_params = None
        ga_gens_level, ga_gens_full, lddmm_its = 30, 2, 100
    else:
        seed_params = dict(num_generations=1000, num_iterations=2000, num_repeats=2)
        scale_params = dict(num_generations=150, num_iterations=200, num_repeats=1)
        ga_gens_level, ga_gens_full, lddmm_its = 100, 3, 300
    for key, value in (("num_generations", args.generations), ("num_iterations", args.iterations),
                       ("num_repeats", args.repeats)):
        if value is not None:
            seed_params[key] = value
            if scale_params is not None:
                scale_params[key] = value

    t_all = time.perf_counter()
    print(f"GALA Studio engine benchmark  --{mode}  ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"device: {device_name(device)}   dtype: float32   torch {torch.__version__} "
          f"(threads {torch.get_num_threads()}, {threads_note}), pygad {pygad.__version__}, numpy {np.__version__}, "
          f"python {platform.python_version()}")
    print(f"engine: {Path(gala_engine.__file__).parent}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, load average {load:.1f} at start"
          + (f"; CUDA {torch.version.cuda}" if device.type == "cuda" else ""))

    if not {"ga", "lddmm"} <= skip:
        section = make_section(SEED_CELLS, SEED_WIDTH, um_per_px=SEED_UM_PER_PX)
        r = make_rasters(section)
        if "ga" not in skip:
            bench_ga(r, generations_full=ga_gens_full, generations_level=ga_gens_level, pop=100, device=device,
                     dtype=dtype)
        if "lddmm" not in skip:
            bench_lddmm(r, section, SEED_UM_PER_PX, iterations=lddmm_its, device=device, dtype=dtype)
        del section, r
    if "defaults" not in skip:
        bench_defaults(device)
    if "seed" not in skip:
        bench_seed(seed_params, mode, device)
    if scale_params is not None and "scaling" not in skip:
        bench_scaling(scale_params, device)
    elif mode == "quick":
        print("\n(scaling table: run with --full)")
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"\nbenchmark wall time {time.perf_counter() - t_all:.1f} s; load average at the end {end_load:.1f} "
          f"({os.cpu_count()} cores: a load above that means other jobs shared the CPU, slowing every row)")


if __name__ == "__main__":
    main()
