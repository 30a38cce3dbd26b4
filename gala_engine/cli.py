"""Command line: ``python -m gala_engine align ...`` / ``batch ...`` / ``params ...`` / ``replay ...`` (also
installed as ``gala-align``).

Exit codes: 0 success; 1 some batch sections failed, or a replay that does not match; 2 bad input or usage (a one-line message on
stderr, no traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import constants
from .errors import GalaInputError
from .events import ProgressEvent
from .features import FEATURE_CHOICES, check_feature

__all__ = ["main"]

PROG = "gala-align"
_STAGES = {"scan": "pose scan", "ga": "GA generations", "refine": "affine refinement", "lddmm": "LDDMM iterations",
           "nuclei": "cells onto nuclei"}


class _Bars:
    """tqdm bars on stderr, one per engine loop (a new bar when a stage or restart begins)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.key: tuple | None = None
        self.last_step = 0
        self.restart = 0

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        key = (event.stage, event.repeat, event.total)
        if self.key != key or event.step <= self.last_step:
            self.restart = self.restart + 1 if (self.key == key) else 0
            self.close()
            label = _STAGES.get(event.stage, event.stage)
            if event.stage == "ga":
                label += f" (restart {self.restart + 1})"
            if event.repeat:
                label += f" [repeat {event.repeat + 1}]"
            self.bar = tqdm(
                total=event.total, desc=label, file=sys.stderr, leave=True, dynamic_ncols=True, mininterval=0.5
            )
            self.key = key
            self.last_step = 0
        self.bar.update(event.step - self.last_step)
        self.bar.set_postfix_str(f"{'fitness' if event.stage == 'ga' else 'value'}={event.value:.4g}", refresh=False)
        self.last_step = event.step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _feature_option(value: str) -> str:
    """argparse type of ``--feature``: a known feature or '+'-joined channels, else a usage error."""
    try:
        return check_feature(value)
    except GalaInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _signal_option(value: str) -> str:
    """argparse type of ``--signal``: well-formed (a gene list without empty names, ``pca[:k]`` with k in range),
    else a usage error; whether the genes exist is checked against the cells once they are read."""
    from .signals import parse_signal

    try:
        parse_signal(value)
    except GalaInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value.strip()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="GALA: align spatial transcriptomics cells to their H&E image.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{align,batch,params,replay}")

    a = sub.add_parser(
        "align",
        help="align one section",
        description="Align one section; writes an aligned .h5ad "
        "with obsm['spatial_he'] (x, y in full-resolution image pixels) and uns['gala'].",
    )
    a.add_argument("--image", required=True, help="tissue image (PNG, JPEG, TIFF incl. pyramidal)")
    a.add_argument("--h5ad", required=True, help="cells: .h5ad with obsm['spatial'] as (x, y) in µm")
    a.add_argument("--out", required=True, help="aligned .h5ad to write (never one of the inputs)")
    _common(a)
    a.add_argument(
        "--signal",
        default=constants.SIGNAL_TOTAL_COUNTS,
        type=_signal_option,
        help=f"cell raster signal: '{constants.SIGNAL_TOTAL_COUNTS}' (default), "
        f"'{constants.SIGNAL_DENSITY}', a gene name, several genes as channels ('EPCAM,KRT8'), or 'pca[:k]' "
        "(the top k principal components of normalised log expression, default 3); a warning names a better "
        "signal when this one is too flat to align",
    )
    a.add_argument("--dx", type=float, default=None, help="cell raster pixel size in µm (default: from the data)")
    a.add_argument(
        "--feature",
        default="auto",
        type=_feature_option,
        help=f"image feature raster: {', '.join(FEATURE_CHOICES)} or channels joined by '+' (default auto: "
        "nuclei (hematoxylin) + tissue for brightfield H&E/IHC, sobel for fluorescence such as DAPI)",
    )
    a.add_argument("--report", metavar="DIR", default=None, help="write a quality report (PNG + JSON) into DIR")
    a.add_argument("--csv", metavar="OUT.csv", default=None,
                   help="also write the cells as CSV: cell_id, x_um, y_um, x_px, y_px[, confidence]")
    a.add_argument("--zarr", metavar="OUT.zarr", default=None,
                   help="also write a SpatialData store (image, cells, table, the alignment as coordinate "
                   "transformations; spatialdata.read_zarr, napari-spatialdata)")
    a.add_argument("--channel", type=int, default=None, help="image channel to align against (0-based; multi-channel images)")
    a.add_argument("--series", type=int, default=None, help="TIFF series / image (0-based; default: the largest)")
    a.add_argument("--plane", type=int, default=None, help="Z / time plane of a stack (0-based; default: first non-blank)")
    _landmark_options(a)

    b = sub.add_parser(
        "batch",
        help="align many sections on Dask",
        description="Align every row of a manifest CSV "
        "(columns image,h5ad[,section][,params][,signal][,dx][,feature][,channel][,series][,plane]"
        "[,landmarks][,landmarks_mode][,init_transform]) on Dask distributed.",
    )
    b.add_argument("manifest", help="manifest CSV; relative paths are relative to its folder")
    b.add_argument("--out", required=True,
                   help="output folder (<section>.h5ad, summary.csv, reports/; with --csv / --zarr also "
                   "<section>.csv / <section>.zarr)")
    _common(b)
    b.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="Dask scheduler address (default: a LocalCluster on this machine)",
    )
    b.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes (default: auto)")
    b.add_argument("--threads", action="store_true", help="LocalCluster workers as threads of one process")
    b.add_argument("--report", action="store_true", help="write a quality report per section into OUT/reports/")
    b.add_argument("--csv", action="store_true",
                   help="also write each section's cells as OUT/<section>.csv (as align --csv: cell_id, x_um, y_um, "
                   "x_px, y_px[, confidence])")
    b.add_argument("--zarr", action="store_true",
                   help="also write each section as a SpatialData store OUT/<section>.zarr (as align --zarr)")

    t = sub.add_parser(
        "params",
        help="write a parameter file",
        description="Write a TOML parameter file with "
        "the defaults (or the published tutorial's settings) to edit and pass to --params.",
    )
    t.add_argument("out", help="TOML file to write ('-' for stdout)")
    t.add_argument("--tutorial", action="store_true", help="the published tutorial's settings")
    t.add_argument("--params", default=None, metavar="FILE.toml", help="start from this file")
    t.add_argument("--overwrite", action="store_true", help="replace an existing file")
    r = sub.add_parser(
        "replay",
        help="re-run a recorded alignment and compare",
        description="Re-run the alignment recorded in an aligned .h5ad (uns['gala']: parameters, seed, signal, "
        "feature, dx, image reading) on the same inputs (checked by sha256), write it to --out and say whether "
        "obsm['spatial_he'] matches (exit 0) or not (exit 1).",
    )
    r.add_argument("aligned", help="aligned .h5ad written by gala-align align / batch")
    r.add_argument("--image", required=True, help="the image it was aligned to")
    r.add_argument("--h5ad", required=True, help="the cells file it was made from")
    r.add_argument("--out", required=True, help="the replay's aligned .h5ad (never one of the inputs)")
    r.add_argument("--landmarks", default=None, metavar="PAIRS.csv", help="the landmarks file, if the run used one")
    r.add_argument("--init-transform", default=None, metavar="MATRIX.csv",
                   help="the starting-transform file, if the run used one")
    r.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="compute device (default: as recorded; results differ across devices)")
    r.add_argument("--tolerance", type=float, default=None, metavar="PX",
                   help="largest |Δ spatial_he| (full-resolution px) that counts as a match (default 1e-4)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out (never an input)")
    return p


def _landmark_options(a: argparse.ArgumentParser) -> None:
    """Landmarks, a starting transform and the Xenium Explorer matrix written next to --out."""
    from .landmarks import XENIUM_PIXEL_SIZE

    g = a.add_argument_group("landmarks and transforms")
    g.add_argument("--landmarks", metavar="PAIRS.csv", default=None,
                   help="landmark pairs: GALA's CSV (image_x,image_y,cells_x,cells_y: full-resolution image pixels, "
                   "cell µm) or Xenium Explorer's keypoints CSV (fixedX,fixedY in µm, alignmentX,alignmentY in "
                   "image pixels); at least 3 pairs spread over the tissue")
    g.add_argument("--landmarks-mode", choices=("init", "check"), default="init",
                   help="init (default): start from the landmarks' affine and keep the refinement only while it "
                   "agrees with them; check: align as usual and only report the landmarks' error")
    g.add_argument("--landmarks-fit", choices=("similarity", "affine"), default="similarity",
                   help="landmark affine: similarity (rotation, one scale, shift, flip detected; default) or "
                   "affine (also shear / two scales; needs more well-spread pairs)")
    g.add_argument("--init-transform", metavar="MATRIX.csv", default=None,
                   help="start from Xenium Explorer's transformation-matrix CSV (H&E pixels → Xenium pixels)")
    g.add_argument("--pixel-size", type=float, default=XENIUM_PIXEL_SIZE, metavar="UM",
                   help=f"µm per Xenium pixel for Xenium Explorer matrices (default {XENIUM_PIXEL_SIZE}, "
                   "'pixel_size' in experiment.xenium)")
    g.add_argument("--no-xenium-matrix", action="store_true",
                   help="do not write <out stem>_xenium_matrix.csv (the result as a Xenium Explorer matrix)")


def _landmark_line(res: dict[str, Any]) -> str:
    """The landmark part of the CLI's closing message (empty without landmarks)."""
    lm = res.get("landmarks")
    if not lm:
        return ""
    worst = max(lm["pairs"], key=lambda p: p["error_px"])
    line = (f"; landmarks ({lm['mode']}): median error {lm['median_px']:.2f} px, worst pair "
            f"{worst['name']} {worst['error_px']:.2f} px")
    return line + (f" ({lm['message']})" if lm.get("message") else "")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default=None, metavar="FILE.toml", help="alignment parameters (AlignParams names)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"), help="compute device (default: CUDA if present)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never the inputs)")


def _params(args: argparse.Namespace):
    from .paramfile import read_params
    from .params import AlignParams

    params = read_params(args.params) if args.params else AlignParams()
    if getattr(args, "device", None):
        from .device import resolve_device

        resolve_device(args.device)  # a clear error when CUDA is missing
        params = AlignParams.from_dict({**params.to_dict(), "device": args.device})
    return params


def _cmd_align(args: argparse.Namespace) -> int:
    from .batch import align_files
    from .io import path_problem

    for label, path in (("image", args.image), ("cells (--h5ad)", args.h5ad)):
        if problem := path_problem(Path(path)):
            raise GalaInputError(f"{label} file {problem}")
    params = _params(args)
    bars = _Bars(enabled=not args.quiet)
    try:
        res = align_files(
            args.image,
            args.h5ad,
            args.out,
            params,
            signal=args.signal,
            dx=args.dx,
            feature=args.feature,
            report_dir=args.report,
            progress=bars,
            overwrite=args.overwrite,
            protect=[args.params],
            channel=args.channel,
            series=args.series,
            plane=args.plane,
            landmarks=args.landmarks,
            landmarks_mode=args.landmarks_mode,
            landmarks_fit=args.landmarks_fit,
            init_transform=args.init_transform,
            pixel_size=args.pixel_size,
            xenium_matrix=not args.no_xenium_matrix,
            csv=args.csv,
            zarr=args.zarr,
        )
    finally:
        bars.close()
    for warning in res.get("warnings", []):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if "qc" in res:  # the quality flags: the verdict, then what is off and what to try
        from .qc import verdict_lines

        for text in verdict_lines(res["qc"]):
            print(f"{PROG}: {text}", file=sys.stderr)
    line = f"wrote {res['output']}: fitness {res['fitness']:.4f}, {res['runtime_s']:.1f} s on {res['device']}"
    if "qc" in res:
        line += f"; quality: {res['qc']['verdict']}"
    if "report" in res:
        rep = res["report"]
        line += f"; report {rep['png']} (overlap {rep['overlap_before']:.3f} → {rep['overlap_after']:.3f})"
    line += _landmark_line(res)
    if "xenium_matrix" in res:
        line += f"; Xenium Explorer matrix {res['xenium_matrix']}"
    for key, label in (("csv", "cells CSV"), ("zarr", "SpatialData")):
        if key in res:
            line += f"; {label} {res[key]}"
    print(line, file=sys.stderr)
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from .batch import read_manifest, run_batch

    base = _params(args)
    rows = read_manifest(args.manifest, base=base)
    bar: Any = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc="sections", unit="section", file=sys.stderr, dynamic_ncols=True)

    def done(rec: dict[str, Any]) -> None:
        if bar is not None:
            bar.update(1)
            if rec["status"] != "ok":
                bar.write(f"{rec['section']}: failed: {rec['error']}", file=sys.stderr)

    try:
        records = run_batch(
            rows,
            args.out,
            scheduler=args.scheduler,
            n_workers=args.workers,
            processes=not args.threads,
            report=args.report,
            on_done=done,
            overwrite=args.overwrite,
            protect=[args.manifest, args.params],
            csv=args.csv,
            zarr=args.zarr,
        )
    finally:
        if bar is not None:
            bar.close()
    ok = sum(r["status"] == "ok" for r in records)
    print(f"{ok}/{len(records)} sections aligned; summary: {Path(args.out) / 'summary.csv'}", file=sys.stderr)
    return 0 if ok == len(records) else 1


def _cmd_params(args: argparse.Namespace) -> int:
    from .paramfile import dumps_params, read_params, write_params
    from .params import AlignParams

    params = read_params(args.params) if args.params else (AlignParams.tutorial() if args.tutorial else AlignParams())
    if args.out == "-":
        sys.stdout.write(dumps_params(params))
    else:
        from .outputs import check_outputs

        check_outputs([("output", args.out)], [args.params], overwrite=args.overwrite)
        write_params(params, args.out)
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from .io import path_problem
    from .replay import MATCH_TOLERANCE_PX, replay

    for label, path in (("aligned file", args.aligned), ("image", args.image), ("cells (--h5ad)", args.h5ad)):
        if problem := path_problem(Path(path)):
            raise GalaInputError(f"{label} {problem}")
    if args.device:
        from .device import resolve_device

        resolve_device(args.device)  # a clear error when CUDA is missing
    tolerance = MATCH_TOLERANCE_PX if args.tolerance is None else args.tolerance
    if not tolerance > 0:
        raise GalaInputError(f"--tolerance must be a positive number of pixels, got {args.tolerance}.")
    bars = _Bars(enabled=not args.quiet)
    try:
        res = replay(args.aligned, args.image, args.h5ad, args.out, landmarks=args.landmarks,
                     init_transform=args.init_transform, device=args.device, overwrite=args.overwrite,
                     progress=bars, tolerance=tolerance)
    finally:
        bars.close()
    for warning in res["warnings"]:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    verdict = "matches" if res["match"] else "DIFFERS"
    print(f"replay {verdict}: max |Δ spatial_he| = {res['max_delta_px']:.3g} px (tolerance {tolerance:g} px; median "
          f"{res['median_delta_px']:.3g} px) on {res['device']} (recorded: {res['recorded_device'] or '?'}); wrote "
          f"{res['output']}", file=sys.stderr)
    return 0 if res["match"] else 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)  # usage errors: argparse's message and exit code 2
    except SystemExit as exc:  # --help and usage errors: return the code instead of exiting
        return exc.code if isinstance(exc.code, int) else 2
    commands = {"align": _cmd_align, "batch": _cmd_batch, "params": _cmd_params, "replay": _cmd_replay}
    try:
        return commands[args.command](args)
    except GalaInputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        print(f"{PROG}: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
