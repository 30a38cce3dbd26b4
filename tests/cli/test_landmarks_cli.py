"""``gala-align align --landmarks / --init-transform``: check and init modes, the report's landmark marks,
uns['gala']['landmarks'], the Xenium Explorer matrix written next to --out, and bad landmark files."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import cv2
import numpy as np
import pytest

from gala_engine import constants
from gala_engine.demo import DEMO_DIR, load_demo, truth_px_xy
from gala_engine.landmarks import Landmarks, read_xenium_matrix, write_landmarks, write_xenium_matrix

from .conftest import Synth, run_cli

TINY_IMAGE = DEMO_DIR / "visium_tiny" / "tissue_lowres_image.png"
TINY_H5AD = DEMO_DIR / "visium_tiny" / "squidpy_visium_tiny.h5ad"
SWAP = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _err_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("gala-align: error:"), proc.stderr
    return lines[-1]


def test_check_mode_reports_the_true_error(synth: Synth, param_files: dict[str, Path], tmp_path: Path) -> None:
    """Noiseless landmarks (true positions of 5 cells): the reported per-pair errors are the true errors
    of those cells in the written alignment (LDDMM included), within 1 px."""
    um = np.asarray(ad.read_h5ad(synth.h5ad).obsm["spatial"], np.float64)
    idx = [10, 500, 1200, 2000, 2900]
    pairs = tmp_path / "pairs.csv"
    write_landmarks(pairs, Landmarks(synth.truth_xy[idx], um[idx]))
    out, report = tmp_path / "out.h5ad", tmp_path / "report"
    proc = run_cli("align", "--image", synth.image, "--h5ad", synth.h5ad, "--out", out, "--params",
                   param_files["synth"], "--landmarks", pairs, "--landmarks-mode", "check", "--report", report,
                   "-q")
    assert proc.returncode == 0, proc.stderr
    assert "landmarks (check): median error" in proc.stderr
    aligned = ad.read_h5ad(out)
    true_err = np.linalg.norm(aligned.obsm[constants.ALIGNED_KEY][idx] - synth.truth_xy[idx], axis=1)
    metrics = json.loads((report / "gala_report.json").read_text())
    reported = np.array([p["error_px"] for p in metrics["landmarks"]["pairs"]])
    np.testing.assert_allclose(reported, true_err, atol=1.0)
    assert metrics["landmarks"]["median_px"] == pytest.approx(np.median(reported))
    uns = aligned.uns[constants.UNS_KEY]["landmarks"]
    np.testing.assert_allclose(uns["error_px"], reported, atol=1e-6)
    assert len(uns["names"]) == 5
    assert cv2.imread(str(report / "gala_report.png")) is not None
    # the Xenium matrix of the run sits next to --out and maps like the run's affine
    matrix = tmp_path / "out_xenium_matrix.csv"
    assert matrix.is_file()
    A = read_xenium_matrix(matrix)
    px = (np.linalg.inv(A) @ np.c_[um[idx][:, ::-1], np.ones(5)].T).T[:, 1::-1]
    assert np.median(np.linalg.norm(px - aligned.obsm[constants.ALIGNED_KEY][idx], axis=1)) < 1.0


def test_init_mode_aligns_the_hard_visium_fixture(param_files: dict[str, Path], tmp_path: Path) -> None:
    """visium_tiny, which the images alone do not align: 4 pairs clicked ~1 px off → within 3 px."""
    demo = load_demo("visium_tiny")
    um = np.asarray(demo.adata.obsm["spatial"], np.float64)
    truth = truth_px_xy(demo)
    idx = [3, 27, 55, 81]
    rng = np.random.default_rng(0)
    lm = Landmarks(truth[idx] + rng.normal(0, 1.0, (4, 2)), um[idx])
    pairs = write_landmarks(tmp_path / "keypoints.csv", lm, fmt="xenium")  # Xenium Explorer's keypoints
    out, report = tmp_path / "tiny.h5ad", tmp_path / "rep"
    proc = run_cli("align", "--image", TINY_IMAGE, "--h5ad", TINY_H5AD, "--out", out, "--params",
                   param_files["fast"], "--landmarks", pairs, "--report", report, "-q")
    assert proc.returncode == 0, proc.stderr
    aligned = ad.read_h5ad(out)
    assert float(np.median(np.linalg.norm(aligned.obsm[constants.ALIGNED_KEY] - truth, axis=1))) <= 3.0
    assert "landmarks (init)" in proc.stderr and "Xenium Explorer matrix" in proc.stderr
    assert json.loads((report / "gala_report.json").read_text())["landmarks"]["median_px"] < 3.0


def test_init_transform_from_a_xenium_matrix(synth: Synth, param_files: dict[str, Path], tmp_path: Path) -> None:
    """Start from Xenium Explorer's matrix (pixel size 0.5 µm) of a pose 4° and ~8 px off: the run lands on
    the truth, and its own matrix is written next to --out."""
    t = np.deg2rad(4.0)
    off = np.array([[np.cos(t), -np.sin(t), 5.0], [np.sin(t), np.cos(t), -6.0], [0.0, 0.0, 1.0]])
    matrix = write_xenium_matrix(tmp_path / "he_matrix.csv", synth.A @ off, pixel_size=0.5)
    out = tmp_path / "o.h5ad"
    proc = run_cli("align", "--image", synth.image, "--h5ad", synth.h5ad, "--out", out, "--params",
                   param_files["fast"], "--init-transform", matrix, "--pixel-size", "0.5", "-q")
    assert proc.returncode == 0, proc.stderr
    aligned = ad.read_h5ad(out)
    err = np.linalg.norm(aligned.obsm[constants.ALIGNED_KEY] - synth.truth_xy, axis=1)
    assert np.median(err) < 3.0
    written = read_xenium_matrix(tmp_path / "o_xenium_matrix.csv", pixel_size=0.5)  # written at the run's size
    np.testing.assert_allclose(written, np.asarray(aligned.uns[constants.UNS_KEY]["A"]), atol=1e-9)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("two_pairs", "at least 3"),
        ("collinear", "one line"),
        ("nan", "NaN"),
        ("wrong_columns", "header"),
        ("outside", "outside"),
        ("both_starts", "both give a starting pose"),
        ("matrix_is_keypoints", "not a transformation matrix"),
        ("missing", "not found"),
    ],
)
def test_bad_landmark_inputs_end_with_a_clear_message(case: str, match: str, tmp_path: Path) -> None:
    header = "image_x,image_y,cells_x,cells_y\n"
    bodies = {
        "two_pairs": header + "10,10,0,0\n50,10,40,0\n",
        "collinear": header + "10,10,0,0\n20,20,10,10\n30,30,20,20\n",
        "nan": header + "10,10,0,0\n50,10,40,0\n10,nan,0,40\n",
        "wrong_columns": "x,y,u,v\n1,2,3,4\n",
        "outside": header + "10,10,0,0\n50,10,40,0\n10,5000,0,40\n",
    }
    f = tmp_path / "pairs.csv"
    f.write_text(bodies.get(case, header + "10,10,0,0\n50,10,40,0\n10,50,0,40\n"))
    extra = []
    if case == "both_starts":
        m = tmp_path / "m.csv"
        m.write_text("1,0,0\n0,1,0\n0,0,1\n")
        extra = ["--init-transform", m]
    args = ["--landmarks", f, *extra]
    if case == "matrix_is_keypoints":
        f.write_text("fixedX,fixedY,alignmentX,alignmentY\n1,2,3,4\n")
        args = ["--init-transform", f]
    if case == "missing":
        args = ["--landmarks", tmp_path / "nope.csv"]
    proc = run_cli("align", "--image", TINY_IMAGE, "--h5ad", TINY_H5AD, "--out", tmp_path / "o.h5ad", *args)
    assert proc.returncode == 2, proc.stderr
    assert match in _err_line(proc)
    assert not (tmp_path / "o.h5ad").exists()


def test_batch_manifest_with_landmarks(param_files: dict[str, Path], tmp_path: Path) -> None:
    """A manifest's landmarks column (relative to the manifest): the section starts from its pairs, and the
    summary, the aligned .h5ad and the Xenium matrix are written."""
    demo = load_demo("visium_tiny")
    um = np.asarray(demo.adata.obsm["spatial"], np.float64)
    truth = truth_px_xy(demo)
    idx = [3, 27, 55, 81]
    write_landmarks(tmp_path / "tiny_pairs.csv", Landmarks(truth[idx], um[idx]))
    (tmp_path / "manifest.csv").write_text(
        "section,image,h5ad,params,landmarks,landmarks_mode\n"
        f"tiny,{TINY_IMAGE},{TINY_H5AD},{param_files['fast']},tiny_pairs.csv,init\n"
    )
    out = tmp_path / "out"
    proc = run_cli("batch", tmp_path / "manifest.csv", "--out", out, "--workers", "1", "--threads", "-q",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    aligned = ad.read_h5ad(out / "tiny.h5ad")
    assert float(np.median(np.linalg.norm(aligned.obsm[constants.ALIGNED_KEY] - truth, axis=1))) <= 3.0
    assert len(aligned.uns[constants.UNS_KEY]["landmarks"]["error_px"]) == 4
    assert (out / "tiny_xenium_matrix.csv").is_file()
