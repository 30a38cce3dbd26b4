"""The quality report (``--report``): PNG + JSON of metrics."""

from __future__ import annotations

import json

import cv2
import numpy as np

from gala_engine.report import centred_affine, jacobian_range

from .conftest import Run

FIELDS = ("fitness", "overlap_before", "overlap_after", "jacobian_det_min", "jacobian_det_max", "runtime_s",
          "device", "params", "versions")


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


def test_jacobian_detects_folding() -> None:
    xv = [np.linspace(0, 100, 21), np.linspace(0, 100, 21)]
    rr, cc = np.meshgrid(*xv, indexing="ij")
    smooth = np.zeros((1, 21, 21, 2))
    smooth[0, ..., 0] = 2.0 * np.sin(2 * np.pi * cc / 100)
    lo, hi = jacobian_range(_Fake(smooth, xv))
    assert 0 < lo <= 1.0 + 1e-9 and hi >= 1.0 - 1e-9
    folding = np.zeros((1, 21, 21, 2))
    folding[0, ..., 0] = -3.0 * rr * (rr > 40) * (rr < 60)  # rows pushed backwards over each other
    assert jacobian_range(_Fake(folding, xv))[0] < 0
    assert jacobian_range(_Fake(np.zeros((1, 21, 21, 2)), xv)) == (1.0, 1.0) or np.allclose(
        jacobian_range(_Fake(np.zeros((1, 21, 21, 2)), xv)), 1.0)


def test_centred_affine_maps_centre_to_centre() -> None:
    class R:
        xI = [np.arange(0, 101.0), np.arange(0, 201.0)]
        xJ = [np.arange(-50, 51.0) * 2, np.arange(-100, 101.0) * 2]

    A = centred_affine(R)
    np.testing.assert_allclose(A @ [50, 100, 1], [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(A[0, 0], 2.0)
