"""Accuracy table: the median error of every known-transform case the tests check.

Run from the repository root: ``python bench/accuracy_table.py`` (about 2 minutes on a 2-core CPU).
Synthetic errors are in target-raster pixels; real data in µm and image pixels against
``uns['ground_truth']`` after a known rotation/flip/shift of ``obsm['spatial']``.
"""

from __future__ import annotations

import sys
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


def main() -> None:
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


if __name__ == "__main__":
    main()
