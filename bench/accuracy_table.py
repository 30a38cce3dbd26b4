"""Accuracy table: the median error of every known-transform case the tests check.

Run from the repository root:

    python bench/accuracy_table.py                 # the engine rows below + every validation case (long)
    python bench/accuracy_table.py --fast          # the validation test subset only
    python bench/accuracy_table.py --heldout       # only the held-out family (look once, at the end)
    python bench/accuracy_table.py --family nuclei --paths cli
    python bench/accuracy_table.py --legacy-only   # only the engine rows (about 2 minutes on a 2-core CPU)

Engine rows: synthetic errors in target-raster pixels; real data in µm and image pixels against
``uns['ground_truth']`` after a known rotation/flip/shift of ``obsm['spatial']``.

Validation rows (``tests/validation``, issue 11): cases from real images by four generators (nuclei,
uniform, spots, merfish) under rotations, flips, scales, shifts and smooth warps, each run through the
CLI defaults and the published tutorial's recipe; median / p90 error in µm, median in cell-raster
pixels, the affine-only median, runtime. ``--jsonl FILE`` appends every row as JSON as it completes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gala_engine import gala, to_cpu, transform_points_target_to_source  # noqa: E402
from gala_engine.demo import DEMO_DIR, load_demo  # noqa: E402
from gala_engine.io import read_image  # noqa: E402
from tests.engine.synth import make_pair, median_error_target_px  # noqa: E402
from tests.engine.test_real_data import _median_error_um  # noqa: E402

SYNTHETIC = [(0, 1, 1), (90, 0.5, 0.5), (180, 2, 2), (270, 1, -1), (37, 0.8, -0.6), (-123, 0.75, 1.05)]


def _synthetic_error(pair, result, *, deformed: bool = True) -> float:
    r = to_cpu(result)
    v = r["v"] if deformed else 0 * r["v"]
    return median_error_target_px(pair, transform_points_target_to_source(r["xv"], v, r["A"], pair.cells_um))


def legacy_rows() -> None:
    """The engine's own known-transform cases (synthetic DAPI pairs and the bundled real data)."""
    image = read_image(DEMO_DIR / "merfish_mini" / "mini_dataset_dapi_z1.jpg", max_side=600).pixels[..., 0]
    print(f"{'case':<48} median error")
    for angle, sy, sx in SYNTHETIC:
        pair = make_pair(image, angle, sy, sx)
        error = _synthetic_error(pair, gala(pair.xI, pair.I, pair.xJ, pair.J, num_iterations=0))
        print(f"{f'synthetic {angle}°, scale ({sy}, {sx})':<48} {error:.2f} target px", flush=True)
    pair = make_pair(image, 30, 0.8, 0.8, warp=12.0, kind="intensity")
    result = gala(pair.xI, pair.I, pair.xJ, pair.J, num_iterations=200)
    for deformed in (False, True):
        label = f"synthetic 30° + 12 µm warp, {'LDDMM' if deformed else 'affine only'}"
        print(f"{label:<48} {_synthetic_error(pair, result, deformed=deformed):.2f} target px", flush=True)
    for name in ("merfish_mini", "visium_dg", "visium_tiny"):
        px_per_um = np.sqrt(abs(np.linalg.det(load_demo(name).um_to_px[:, :2])))
        for angle, flip in ((0.0, False), (130.0, True)):
            error = _median_error_um(name, angle, flip, num_iterations=0)
            label = f"{name} {'as-is' if not angle else f'rotated {angle:.0f}° + flip + shift'}"
            print(f"{label:<48} {error:.2f} µm = {error * px_per_um:.2f} image px", flush=True)


# ------------------------------------------------------------------------------ validation table

HEADER = ("| case | family | path | warp µm | cells | median µm | p90 µm | raster px (dx µm) | affine-only µm | runtime s |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def _f(v, nd=1) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}"


def format_row(o) -> str:
    if o.error:
        return (f"| {o.case} | {o.family} | {o.path} | {o.warp_um:g} | {o.n_cells} | failed: {o.error[:80]} "
                f"| | | | {o.runtime_s:.0f} |")
    return (f"| {o.case} | {o.family} | {o.path} | {o.warp_um:g} | {o.n_cells} | {_f(o.median_um)} | {_f(o.p90_um)} "
            f"| {_f(o.median_raster_px, 2)} ({o.dx_um:g}) | {_f(o.affine_median_um)} | {o.runtime_s:.0f} |")


def validation_rows(*, fast: bool, heldout: bool, family: str | None, paths: list[str], jsonl: str | None,
                    cases: list[str] | None = None) -> list:
    from tests.validation.cases import build_case, specs
    from tests.validation.runners import run_cli_defaults, run_tutorial

    chosen = specs(fast=True if fast else None, family=family, heldout=heldout)
    if cases:
        chosen = [s for s in chosen if s.name in cases]
    print(f"\n{len(chosen)} validation cases × paths {paths}\n", flush=True)
    print(HEADER, flush=True)
    outcomes = []
    runners = {"cli": run_cli_defaults, "tutorial": run_tutorial,
               "tutorial-derived": lambda case: run_tutorial(case, gene_space=[{}, {}, {}, {}, {}])}
    for spec in chosen:
        case = build_case(spec)
        for path in paths:
            o = runners[path](case)
            outcomes.append(o)
            print(format_row(o), flush=True)
            if jsonl:
                with open(jsonl, "a") as fh:
                    fh.write(json.dumps({**o.as_dict(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    return outcomes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="only the validation test subset (no engine rows)")
    ap.add_argument("--heldout", action="store_true", help="only the held-out family (no engine rows)")
    ap.add_argument("--family", choices=("nuclei", "uniform", "spots", "merfish"), default=None)
    ap.add_argument("--case", action="append", default=None, help="only this case (repeatable)")
    ap.add_argument("--paths", default="cli,tutorial",
                    help="comma-separated: cli, tutorial, tutorial-derived (the recipe with empty gene_space dicts: "
                         "the engine's derived ranges)")
    ap.add_argument("--legacy-only", action="store_true", help="only the engine rows")
    ap.add_argument("--no-legacy", action="store_true", help="skip the engine rows")
    ap.add_argument("--jsonl", default=None, help="append each validation row as JSON to this file")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 when the load average exceeds the core count)")
    args = ap.parse_args(argv)
    import torch

    threads = args.threads
    if threads is None and hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1):
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    print(f"torch threads {torch.get_num_threads()}; {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    legacy = not (args.fast or args.heldout or args.family or args.case or args.no_legacy)
    if legacy or args.legacy_only:
        legacy_rows()
    if args.legacy_only:
        return
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    validation_rows(fast=args.fast, heldout=args.heldout, family=args.family, paths=paths, jsonl=args.jsonl,
                    cases=args.case)


if __name__ == "__main__":
    main()
