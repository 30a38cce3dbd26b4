"""Real alignments (CLI defaults, the engine path of ``align_files``) of the validation cases and the bundled
demos, saved as transform ``.npz`` with the truth beside them, to calibrate the quality flags
(``bench/qc_calibration.py``) on what the engine really produces.

    python bench/qc_runs.py OUT_DIR [--fast] [--case NAME ...] [--demos]

Each case writes ``OUT_DIR/<case>.npz`` (the :class:`AlignmentResult`) and ``OUT_DIR/<case>.json``
(signal, feature, dx, median error µm, runtime).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gala_engine import checks, io, section  # noqa: E402
from gala_engine.params import AlignParams  # noqa: E402


def section_inputs(image_array: np.ndarray | None, adata, image_path: Path | None = None):
    """(cells, LoadedImage, signal) as the CLI reads them (the image through a PNG file, like the CLI)."""
    from tests.validation.runners import write_image

    if image_path is None:
        with tempfile.TemporaryDirectory() as tmp:
            image_path = Path(tmp) / "image.png"
            write_image(image_array, image_path)
            img = io.read_image(image_path, max_side=4096)
    else:
        img = io.read_image(image_path, max_side=4096)
    found = checks.check_cells(adata, signal="total counts", name="cells")
    return img, found.signal


def run_one(name: str, adata, img, signal: str, truth_xy: np.ndarray, um_per_px: float, out: Path) -> dict:
    t0 = time.perf_counter()
    rasters = section.prepare_section(adata, img, signal=signal)
    result = section.align_section(rasters, AlignParams())
    xy = io.spatial_yx(adata)[:, ::-1]
    pred = result.cells_to_image(xy)
    err = np.linalg.norm(pred - truth_xy, axis=1) * um_per_px
    result.save_npz(out / f"{name}.npz")
    row = {"case": name, "signal": signal, "feature": rasters.feature, "dx": rasters.dx,
           "median_um": float(np.median(err)), "runtime_s": time.perf_counter() - t0}
    (out / f"{name}.json").write_text(json.dumps(row))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--case", nargs="*", default=None)
    ap.add_argument("--demos", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.demos:
        from gala_engine.demo import load_demo, truth_px_xy

        for name in ("visium_dg", "merfish_mini", "visium_tiny"):
            d = load_demo(name)
            img, signal = section_inputs(None, d.adata, d.image_path)
            um_per_px = 1.0 / np.sqrt(abs(np.linalg.det(d.um_to_px[:, :2])))
            print(run_one(f"demo-{name}", d.adata, img, signal, truth_px_xy(d), um_per_px, out), flush=True)
    from tests.validation.cases import build_case, specs

    for spec in specs(fast=args.fast):
        if args.case and spec.name not in args.case:
            continue
        if (out / f"{spec.name}.json").exists() or spec.name.endswith("spacing10"):  # done / the 163k-cell case
            continue
        case = build_case(spec)
        img, signal = section_inputs(case.image, case.adata)
        print(run_one(spec.name, case.adata, img, signal, case.truth_xy_px, case.um_per_px, out), flush=True)


if __name__ == "__main__":
    main()
