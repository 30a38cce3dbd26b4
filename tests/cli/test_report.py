"""The quality report (``--report``): PNG + JSON of metrics."""

from __future__ import annotations

import json

import cv2
import numpy as np

from gala_engine.report import centred_affine, jacobian_det, jacobian_range

from .conftest import Run

FIELDS = (
    "fitness",
    "overlap_before",
    "overlap_after",
    "jacobian_det_min",
    "jacobian_det_max",
    "runtime_s",
    "device",
    "params",
    "versions",
)


def test_report_png_and_json(synth_run: Run) -> None:
    assert synth_run.proc.returncode == 0, synth_run.proc.stderr
    png = synth_run.report / "gala_report.png"
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 500 and img.shape[1] > 1000
    assert img.std() > 10  # not blank
    metrics = json.loads((synth_run.report / "gala_report.json").read_text())
    for key in FIELDS:
        assert key in metrics, key
    assert 0 < metrics["jacobian_det_min"] <= metrics["jacobian_det_max"]
    assert metrics["folding"] is False
    assert metrics["overlap_after"] > metrics["overlap_before"] + 0.2
    assert metrics["params"]["num_iterations"] == 15
    assert metrics["device"] == "CPU"
    assert {"numpy", "torch", "python"} <= set(metrics["versions"])
    assert metrics["n_cells"] == 3000


class _Fake:
    def __init__(self, v: np.ndarray, xv: list[np.ndarray]) -> None:
        self.v, self.xv = v, xv


def test_jacobian_of_a_smooth_warp_is_positive_and_not_trivial() -> None:
    xv = [np.linspace(0, 100, 21), np.linspace(0, 100, 21)]
    _, cc = np.meshgrid(*xv, indexing="ij")
    v = np.zeros((1, 21, 21, 2))
    v[0, ..., 1] = 2.0 * np.sin(2 * np.pi * cc / 100)  # |dv/dx| ≤ 0.13
    lo, hi = jacobian_range(_Fake(v, xv))
    assert 0.7 < lo < 0.98 and 1.02 < hi < 1.3
    assert np.allclose(jacobian_range(_Fake(np.zeros_like(v), xv)), 1.0)


def test_jacobian_det_detects_folding() -> None:
    axes = [np.linspace(0, 1, 30), np.linspace(0, 1, 40)]
    rr, cc = np.meshgrid(*axes, indexing="ij")
    ok = np.stack([rr + 0.05 * np.sin(2 * np.pi * cc), cc], -1)
    assert jacobian_det(ok, axes).min() > 0
    folded = np.stack([rr, np.where(cc < 0.5, cc, 1.0 - cc)], -1)  # the right half mirrored onto the left
    assert jacobian_det(folded, axes).min() < 0


def test_centred_affine_maps_centre_to_centre() -> None:
    class R:
        xI = [np.arange(0, 101.0), np.arange(0, 201.0)]
        xJ = [np.arange(-50, 51.0) * 2, np.arange(-100, 101.0) * 2]

    A = centred_affine(R)
    np.testing.assert_allclose(A @ [50, 100, 1], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(A[0, 0], 2.0)
