"""``python -m gala_engine align``: coordinates against the truth, output contract, bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from gala_engine import constants
from gala_engine.cli import main
from gala_engine.demo import load_demo, truth_px_xy

from .conftest import DAPI, MERFISH_H5AD, Run, Synth, run_cli


def _median_error(xy: np.ndarray, truth: np.ndarray) -> float:
    return float(np.median(np.linalg.norm(np.asarray(xy) - truth, axis=1)))


@pytest.mark.slow
def test_align_merfish_demo_matches_truth(param_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merfish_aligned.h5ad"
    before = MERFISH_H5AD.stat().st_mtime_ns
    proc = run_cli("align", "--image", DAPI, "--h5ad", MERFISH_H5AD, "--out", out, "--params", param_files["fast"])
    assert proc.returncode == 0, proc.stderr
    assert "GA generations" in proc.stderr  # a progress bar per stage
    demo = load_demo("merfish_mini")
    aligned = ad.read_h5ad(out)
    assert aligned.obsm[constants.ALIGNED_KEY].shape == (aligned.n_obs, 2)
    px_per_um = float(np.sqrt(abs(np.linalg.det(demo.um_to_px[:, :2]))))
    err_um = _median_error(aligned.obsm[constants.ALIGNED_KEY], truth_px_xy(demo)) / px_per_um
    assert err_um < 10.0, f"median error {err_um:.2f} µm"
    gala = aligned.uns[constants.UNS_KEY]
    assert gala["params"]["num_generations"] == 40 and gala["params"]["num_iterations"] == 0
    np.testing.assert_array_equal(aligned.obsm[constants.SPATIAL_KEY], demo.adata.obsm[constants.SPATIAL_KEY])
    assert MERFISH_H5AD.stat().st_mtime_ns == before  # the input is untouched


def test_align_synthetic_known_transform(synth: Synth, synth_run: Run) -> None:
    assert synth_run.proc.returncode == 0, synth_run.proc.stderr
    assert "LDDMM iterations" in synth_run.proc.stderr
    aligned = ad.read_h5ad(synth_run.out)
    err_px = _median_error(aligned.obsm[constants.ALIGNED_KEY], synth.truth_xy)
    assert err_px < 3.0, f"median error {err_px:.2f} px"  # image ~400 px, 1.6 µm/px
    affine_err = _median_error(aligned.obsm[constants.ALIGNED_AFFINE_KEY], synth.truth_xy)
    assert affine_err < 3.0
    A = np.asarray(aligned.uns[constants.UNS_KEY]["A_affine"])
    np.testing.assert_allclose(np.linalg.det(A[:2, :2]), np.linalg.det(synth.A[:2, :2]), rtol=0.1)
    assert not list(synth_run.out.parent.glob(".*.tmp"))  # atomic write leaves no temporary file
    image = aligned.uns[constants.UNS_KEY]["image"]  # which image: name, size, checksum, pixels
    assert image["file"] == Path(synth.image).name and image["bytes"] == Path(synth.image).stat().st_size
    assert image["sha256"] == hashlib.sha256(Path(synth.image).read_bytes()).hexdigest()


def _err_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("gala-align: error:"), proc.stderr
    return lines[-1]


def test_refuses_out_equal_to_input(synth: Synth) -> None:
    before = synth.h5ad.read_bytes()
    proc = run_cli("align", "--image", synth.image, "--h5ad", synth.h5ad, "--out", synth.h5ad)
    assert proc.returncode == 2
    assert "input" in _err_line(proc)
    assert synth.h5ad.read_bytes() == before
    proc = run_cli("align", "--image", synth.image, "--h5ad", synth.h5ad, "--out", synth.image)
    assert proc.returncode == 2 and "input" in _err_line(proc)


@pytest.mark.parametrize(
    "case",
    [
        "missing_image",
        "missing_h5ad",
        "image_is_h5ad",
        "bad_params",
        "unknown_param",
        "out_folder_missing",
        "bad_gene",
        "no_cuda",
    ],
)
def test_bad_input_one_line_error(case: str, synth: Synth, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image, h5ad, out, extra = synth.image, synth.h5ad, tmp_path / "o.h5ad", []
    if case == "missing_image":
        image = tmp_path / "nope.png"
    elif case == "missing_h5ad":
        h5ad = tmp_path / "nope.h5ad"
    elif case == "image_is_h5ad":
        image = synth.h5ad
    elif case == "bad_params":
        (tmp_path / "p.toml").write_text("num_generations = [\n")
        extra = ["--params", tmp_path / "p.toml"]
    elif case == "unknown_param":
        (tmp_path / "p.toml").write_text("num_generation = 10\n")
        extra = ["--params", tmp_path / "p.toml"]
    elif case == "out_folder_missing":
        out = tmp_path / "no" / "such" / "o.h5ad"
    elif case == "bad_gene":
        extra = ["--signal", "NotAGene"]
    elif case == "no_cuda":
        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present")
        extra = ["--device", "cuda"]
    # in-process (the same main() as the console script; a subprocess per case costs seconds)
    code = main(["align", "--image", str(image), "--h5ad", str(h5ad), "--out", str(out), "-q", *map(str, extra)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gala-align: error:") and len(lines[0]) > 30, err
    assert not out.exists()


def test_usage_error_exit_code(capsys: pytest.CaptureFixture) -> None:
    assert main(["align", "--image", "x.png"]) == 2
    assert "required" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_align_with_only_the_readme_options_writes_the_output(tmp_path: Path) -> None:
    """The README's command: --image, --h5ad, --out and nothing else (no --params: it was once passed on as a
    None input path and crashed the write after the whole alignment)."""
    out = tmp_path / "aligned.h5ad"
    assert main(["align", "--image", str(DAPI), "--h5ad", str(MERFISH_H5AD), "--out", str(out), "-q"]) == 0
    assert ad.read_h5ad(out).obsm[constants.ALIGNED_KEY].shape[1] == 2


def test_the_output_says_which_fitness_ran_and_whether_the_warp_was_kept(tmp_path: Path) -> None:
    out = tmp_path / "aligned.h5ad"
    assert main(["align", "--image", str(DAPI), "--h5ad", str(MERFISH_H5AD), "--out", str(out), "-q"]) == 0
    diagnostics = ad.read_h5ad(out).uns[constants.UNS_KEY]["diagnostics"]
    assert diagnostics["fitness_used"] in ("tissue", "tissue, then ncc", "ncc_support")
    check = diagnostics["lddmm_validation"]
    assert isinstance(check["accepted"], (bool, np.bool_)) and np.asarray(check["held_out_fitness"]).shape == (2, 2)
