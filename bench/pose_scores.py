"""Search failure or feature limit? The published tutorial's recipe on one validation case: the true pose and
the pose gala() finds, scored by the fitness levels gala() builds (GA blurred, pooled, full; plus the whole-raster
"ncc" finish where the search uses "tissue"), once with the raw source ("old": scale matching off) and once as
gala() runs now ("new"). The truth scoring higher than the pose found = the search is at fault.

    python bench/pose_scores.py merfish-merfish_dapi-r150f [more cases]
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gala_engine import AlignParams, gala, normalize, rasterize, scale_match, to_cpu  # noqa: E402
from gala_engine import pipeline as pl  # noqa: E402
from gala_engine.affine import genes_to_matrix_np, matrix_to_genes, swap_xy  # noqa: E402
from gala_engine.io import cell_signal  # noqa: E402
from gala_engine.search import blur_raster, fill_gene_space, pool_raster, shows_glass  # noqa: E402
from tests.validation.cases import get_case  # noqa: E402
from tests.validation.runners import TUTORIAL_CALL, errors_um, tutorial_gene_space, tutorial_source  # noqa: E402


def _levels(I_np, xI_src, xI, J, xJ, gs, kw) -> tuple[str, dict]:
    """The fitness levels gala() builds for this source (its "auto" choice of kind included)."""
    p = AlignParams.from_dict(kw)
    p.fitness = "tissue" if shows_glass(I_np) else "ncc_support"
    It = torch.as_tensor(np.stack([normalize(c) for c in I_np]), dtype=torch.float32)
    Jt = torch.as_tensor(np.stack([normalize(c) for c in np.asarray(J, float)]), dtype=torch.float32)
    space = fill_gene_space(gs, xI, xJ, mode=p.gene_space_mode)
    fI = max(1, math.ceil(max(I_np.shape[1:]) / p.ga_max_pixels))
    fJ = max(1, math.ceil(max(Jt.shape[1:]) / p.ga_max_pixels))
    Ic, xc = pool_raster(It, xI_src, fI)
    Jc, xJc = pool_raster(Jt, xJ, fJ)
    ga = blur_raster(Ic.mean(0, keepdim=True), p.ga_blur), xc, blur_raster(Jc, p.ga_blur), xJc
    out = {"ga": pl._fitness(*ga, p, space, xI, xJ), "pooled": pl._fitness(Ic, xc, Jc, xJc, p, space, xI, xJ),
           "full": pl._fitness(It, xI_src, Jt, xJ, p, space, xI, xJ)}
    if p.fitness == "tissue":
        q = dataclasses.replace(p, fitness="ncc")
        out["pooled_ncc"] = pl._fitness(Ic, xc, Jc, xJc, q, space, xI, xJ)
        out["full_ncc"] = pl._fitness(It, xI_src, Jt, xJ, q, space, xI, xJ)
    return p.fitness, out


def _scores(levels: dict, genes) -> str:
    g = torch.as_tensor(np.asarray(genes, dtype=np.float64)[None], dtype=torch.float32)
    return " ".join(f"{k}={float(f(g)[0]):.4f}" for k, f in levels.items())


def main(name: str) -> None:
    case = get_case(name)
    xy = np.asarray(case.adata.obsm["spatial"], dtype=np.float64)
    YI, XI, I = tutorial_source(case.image)
    XJ, YJ, J = rasterize(xy[:, 0], xy[:, 1], g=cell_signal(case.adata), dx=30.0)
    xI, xJ = [YI, XI], [YJ, XJ]
    gs = tutorial_gene_space(xI, xJ)
    kw = dict(TUTORIAL_CALL, num_generations=300, num_iterations=0, num_repeats=1,
              sigmaM=float(I.std()), sigmaB=float(J.std()))
    truth = matrix_to_genes(swap_xy(case.transform.M), xI, xJ)  # image px (x, y) → µm (x, y) as (row, col)

    def error_um(genes) -> float:
        Ai = np.linalg.inv(genes_to_matrix_np(genes, xI, xJ))
        rc = xy[:, ::-1] @ Ai[:2, :2].T + Ai[:2, 2]
        return float(np.median(errors_um(case, rc[:, ::-1])))

    saved = scale_match.MATCH_RATIO
    print(f"== {name}")
    for mode in ("old", "new"):
        scale_match.MATCH_RATIO = float("inf") if mode == "old" else saved
        try:
            I_m, xI_m, info = scale_match.match_source_scale(np.asarray(I, float), pl._axes(xI), np.asarray(J, float),
                                                             pl._axes(xJ))
            kind, levels = _levels(I_m, xI_m, pl._axes(xI), J, pl._axes(xJ), gs, kw)
            found = np.asarray(to_cpu(gala(xI, I, xJ, J, gene_space=gs, **kw))["genes"])
        finally:
            scale_match.MATCH_RATIO = saved
        e = error_um(found)
        print(f"[{mode}] search fitness {kind}; source match {info}")
        print(f"   truth {np.round(truth, 3)}: {_scores(levels, truth)}")
        print(f"   found {np.round(found, 3)}: {_scores(levels, found)}  error {e:.1f} µm = {e / 30:.2f} raster px")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for arg in sys.argv[1:]:
        main(arg)
