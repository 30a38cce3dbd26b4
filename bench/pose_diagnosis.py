"""Is a wrong global pose the search's fault or the objective's? (one validation case, CLI defaults)

Runs the case through ``gala_engine.cli.main`` (as ``run_cli_defaults``) with the engine's search stages recorded,
then scores the known (true) pose and the found pose with the engine's own fitness levels, also after refining
the truth on them, and says where in the search (scan, GA, refinement choice, finish) the truth's basin was lost.

    python bench/pose_diagnosis.py --case spots-visium_dg_he-r260f-s4-w15-pitch55
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def true_affine_rc(case) -> np.ndarray:
    """The case's known affine as image (row, col) px → µm (row, col), 3×3 (its warp left out)."""
    M = case.transform.M  # (x, y) → (x, y)
    A = np.eye(3)
    A[:2, :2] = M[:2, :2][::-1, ::-1]
    A[:2, 2] = M[::-1, 2]
    return A


def pose_error_um(A: np.ndarray, A_true: np.ndarray, px_rc: np.ndarray) -> float:
    """Median distance (µm, target side) between where two affines put the true cell positions."""
    h = np.c_[px_rc, np.ones(len(px_rc))]
    return float(np.median(np.linalg.norm(h @ A[:2].T - h @ A_true[:2].T, axis=1)))


LAST: dict = {}  # the last run's records, for experiments from Python


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--case", required=True)
    ap.add_argument("--path", choices=("cli", "tutorial"), default="cli")
    ap.add_argument("--centred-scan", action="store_true", help="drop the off-centre scan poses (the old search)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import gala_engine.pipeline as pl
    import gala_engine.qc as qcmod
    import gala_engine.section as sec
    from gala_engine.affine import genes_to_matrix_np, matrix_to_genes
    from gala_engine.search import refine_genes
    from tests.validation.cases import get_case
    from tests.validation.runners import run_cli_defaults, run_tutorial

    case = get_case(args.case)
    if args.centred_scan:
        pl.SCAN_SHIFTS_KEPT = 0
    rec: dict = {"levels": [], "refine": [], "ga": [], "gala": None, "qc": None}
    real_fitness, real_refine, real_ga, real_gala, real_assess = pl._fitness, pl.refine_genes, pl.run_ga, pl.gala, qcmod.assess

    def fitness(*a, **k):
        f = real_fitness(*a, **k)
        rec["levels"].append(f)
        return f

    def refine(level, genes, space, **k):
        g, s = real_refine(level, genes, space, **k)
        rec["refine"].append(dict(level=level, start=np.array(genes), genes=np.array(g), scores=np.array(s),
                                  stage=k.get("stage", "refine"), iterations=k.get("iterations")))
        return g, s

    def ga(coarse, space, **k):
        r = real_ga(coarse, space, **k)
        rec["ga"].append((np.array(k.get("initial_population")), r))
        return r

    def gala(xI, I, xJ, J, gene_space=None, **k):
        out = real_gala(xI, I, xJ, J, gene_space=gene_space, **k)
        rec["gala"] = dict(xI=xI, xJ=xJ, out=out)
        return out

    def assess(*a, **k):
        rec["qc"] = real_assess(*a, **k)
        return rec["qc"]

    import gala_engine

    pl._fitness, pl.refine_genes, pl.run_ga, sec.gala, qcmod.assess = fitness, refine, ga, gala, assess
    gala_engine.gala = gala
    try:
        outcome = run_cli_defaults(case) if args.path == "cli" else run_tutorial(case)
    finally:
        pl._fitness, pl.refine_genes, pl.run_ga, sec.gala, qcmod.assess = (real_fitness, real_refine, real_ga,
                                                                           real_gala, real_assess)
        gala_engine.gala = real_gala
    print(f"{case.name}: {args.path} median {outcome.median_um:.1f} µm, affine {outcome.affine_median_um:.1f} µm, "
          f"fitness {outcome.extra.get('fitness')}")
    g = rec["gala"]
    xI, xJ, out = g["xI"], g["xJ"], g["out"]
    A_true = true_affine_rc(case)
    truth = matrix_to_genes(A_true, xI, xJ)
    px_rc = case.truth_xy_px[:, ::-1]

    def err(genes) -> float:
        return pose_error_um(genes_to_matrix_np(genes, xI, xJ), A_true, px_rc)

    found = np.asarray(out["genes"])
    print(f"truth genes {np.round(truth, 3)}; found {np.round(found, 3)} ({err(found):.0f} µm off)")
    from gala_engine.search import fill_gene_space  # the space gala used: rebuilt from its result
    space = fill_gene_space(out["gene_space"], xI, xJ)
    names = {id(f): f"L{i}" for i, f in enumerate(rec["levels"])}
    print("level  truth   truth→refined (err µm)   found")
    for i, lvl in enumerate(rec["levels"]):
        with torch.no_grad():
            t = float(lvl(torch.as_tensor(truth[None], dtype=lvl.I.dtype))[0])
            f = float(lvl(torch.as_tensor(found[None], dtype=lvl.I.dtype))[0])
        tr, ts = refine_genes(lvl, truth, space, iterations=100)
        print(f"L{i} {tuple(lvl.I.shape)}/{tuple(lvl.J.shape)} {lvl.kind}: {t:.4f}  {ts:.4f} ({err(tr):.0f})  {f:.4f}")
    for r in rec["refine"]:
        e = np.array([err(x) for x in np.atleast_2d(r["genes"])])
        s = np.atleast_1d(r["scores"])
        order = np.argsort(-s)
        near = np.flatnonzero(e < 100.0)
        rank = [int(np.flatnonzero(order == k)[0]) for k in near]
        print(f"refine {r['stage']} on {names.get(id(r['level']), '?')} ({r['level'].kind}), {len(s)} starts, "
              f"{r['iterations']} it: best {s[order[0]]:.4f} ({e[order[0]]:.0f} µm); near truth (<100 µm): "
              + (", ".join(f"r{k}  {s[j]:.4f} ({e[j]:.0f} µm)" for k, j in sorted(zip(rank, near)))[:200]
                 if len(near) else "none"))
    for _population, r in rec["ga"]:
        print(f"GA: best {r.fitness:.4f} at {err(r.genes):.0f} µm")
    LAST.update(rec=rec, truth=truth, found=found, space=space, err=err, case=case)
    qc = rec["qc"] or {}
    qc = qc.get("qc", qc)
    print(f"QC verdict: {qc.get('verdict')}: {qc.get('summary')}")
    margin = qc.get("flags", {}).get("margin")
    if margin:
        print(f"  margin flag: {margin['message']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
