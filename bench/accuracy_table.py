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

HEADER = ("| case | family | path | warp µm | cells | median µm | p90 µm | raster px (dx µm) | affine-only µm "
          "| runtime s | issue 11 targets |\n|---|---|---|---|---|---|---|---|---|---|---|")


def targets(o) -> list[tuple[str, bool]]:
    """Issue 11's targets that apply to one row (spots: the suite's own bar, one raster pixel)."""
    if o.error:
        return [("ran", False)]
    out: list[tuple[str, bool]] = []
    if o.path == "cli":
        if o.family == "nuclei":
            out.append(("≤10 µm", o.median_um <= 10.0))
        elif o.family == "merfish":
            out.append(("≤3 µm", o.median_um <= 3.0))
        else:
            out.append(("≤1 px", o.median_raster_px <= 1.0))
        if o.affine_median_um is not None:
            if o.warp_um:
                out.append(("LDDMM −30 %", o.median_um <= 0.7 * o.affine_median_um))
            else:
                out.append(("LDDMM ≤+10 %", o.median_um <= 1.1 * max(o.affine_median_um, 0.5)))
    elif o.path == "tutorial":
        limit = 2.0 if o.warp_um else 1.0
        out.append((f"≤{limit:g} px", o.median_raster_px <= limit))
    return out


def _f(v, nd=1) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}"


BASELINE: dict = {}  # (case, path) → Outcome of a saved run (--baseline)


def format_row(o) -> str:
    marks = ", ".join(f"{name} {'ok' if ok else 'MISS'}" for name, ok in targets(o))
    base = BASELINE.get((o.case, o.path))
    if base is not None and not base.error:
        marks += f"; baseline {_f(base.median_um)} µm"
    if o.error:
        return (f"| {o.case} | {o.family} | {o.path} | {o.warp_um:g} | {o.n_cells} | failed: {o.error[:80]} "
                f"| | | | {o.runtime_s:.0f} | {marks} |")
    return (f"| {o.case} | {o.family} | {o.path} | {o.warp_um:g} | {o.n_cells} | {_f(o.median_um)} | {_f(o.p90_um)} "
            f"| {_f(o.median_raster_px, 2)} ({o.dx_um:g}) | {_f(o.affine_median_um)} | {o.runtime_s:.0f} | {marks} |")


def summary(outcomes) -> str:
    """Targets met per path and family."""
    rows = {}
    for o in outcomes:
        for name, ok in targets(o):
            key = (o.path, o.family, name)
            hit, n = rows.get(key, (0, 0))
            rows[key] = (hit + ok, n + 1)
    lines = ["| path | family | target | met |", "|---|---|---|---|"]
    lines += [f"| {p} | {f} | {t} | {h}/{n} |" for (p, f, t), (h, n) in sorted(rows.items())]
    return "\n".join(lines)


def from_jsonl(path: str) -> list:
    """Outcomes saved with ``--jsonl`` (the last row of each case × path wins)."""
    from tests.validation.runners import Outcome

    rows = {}
    for line in Path(path).read_text().splitlines():
        d = json.loads(line)
        d.pop("time", None)
        rows[(d["case"], d["path"])] = Outcome(**d)
    return list(rows.values())


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
               "cli-density": lambda case: run_cli_defaults(case, signal="cell density"),
               "cli-affine": lambda case: run_cli_defaults(case, params={"num_iterations": 0}),
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
                         "the engine's derived ranges), cli-density (--signal 'cell density'), cli-affine "
                         "(num_iterations = 0)")
    ap.add_argument("--list", action="store_true", help="list the selected validation cases and exit (runs nothing)")
    ap.add_argument("--legacy-only", action="store_true", help="only the engine rows")
    ap.add_argument("--no-legacy", action="store_true", help="skip the engine rows")
    ap.add_argument("--jsonl", default=None, help="append each validation row as JSON to this file")
    ap.add_argument("--report", default=None, metavar="FILE.jsonl",
                    help="print the table and the targets' summary from rows saved with --jsonl (runs nothing)")
    ap.add_argument("--baseline", default=None, metavar="FILE.jsonl",
                    help="show each row's median from a saved run, e.g. tests/validation/baseline_5a20eb0.jsonl")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 when the load average exceeds the core count)")
    args = ap.parse_args(argv)
    if args.baseline:
        BASELINE.update({(o.case, o.path): o for o in from_jsonl(args.baseline)})
    if args.report:
        outcomes = from_jsonl(args.report)
        print(HEADER)
        for o in outcomes:
            print(format_row(o))
        print("\n" + summary(outcomes))
        return
    if args.list:
        from tests.validation.cases import specs

        for s in specs(fast=args.fast, family=args.family, heldout=args.heldout):
            if not args.case or s.name in args.case:
                print(f"{s.name:<64} {s.family:<8} {'fast' if s.fast else '':<5} {'heldout' if s.heldout else ''}")
        return
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
    outcomes = validation_rows(fast=args.fast, heldout=args.heldout, family=args.family, paths=paths,
                               jsonl=args.jsonl, cases=args.case)
    print("\n" + summary(outcomes), flush=True)


if __name__ == "__main__":
    main()
