"""``align --csv --zarr`` and ``replay``: what the aligned file records, and re-running it to the same result."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from gala_engine import constants
from gala_engine.cli import main
from gala_engine.exports import LIBRARY_ID
from gala_engine.replay import MATCH_TOLERANCE_PX

from .conftest import DAPI, MERFISH_H5AD

# small: a short search and a short LDDMM (the warp is part of what must replay), a few seconds per run
REPLAY_TOML = """\
num_generations = 15
ga_restarts = 1
refine_iterations = 45
scan_iterations = 8
num_iterations = 16
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _align(image: Path, h5ad: Path, folder: Path, *extra: str) -> Path:
    (folder / "replay.toml").write_text(REPLAY_TOML)
    out = folder / "aligned.h5ad"
    assert main(["align", "--image", str(image), "--h5ad", str(h5ad), "--out", str(out), "--params",
                 str(folder / "replay.toml"), "--device", "cpu", "-q", "--no-xenium-matrix", *extra]) == 0
    return out


def _replay(aligned: Path, image: Path, h5ad: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["replay", str(aligned), "--image", str(image), "--h5ad", str(h5ad), "--out", str(out), "-q", *extra])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay_demo")
    out = _align(DAPI, MERFISH_H5AD, folder, "--csv", str(folder / "cells.csv"), "--zarr", str(folder / "cells.zarr"))
    return folder, out


def test_the_record(demo_run) -> None:
    folder, out = demo_run
    aligned = ad.read_h5ad(out)
    gala = aligned.uns[constants.UNS_KEY]
    rec = gala["replay"]
    assert rec["image"]["sha256"] == _sha(DAPI) and rec["cells"]["sha256"] == _sha(MERFISH_H5AD)
    assert rec["image"]["name"] == DAPI.name and int(rec["image"]["bytes"]) == DAPI.stat().st_size
    assert list(rec["image"]["full_shape"]) == [4143, 4603] and float(rec["image"]["scale"]) == 2.0
    assert int(rec["image"]["max_side"]) == 4096 and rec["image"]["channel"] == ""  # "" = not given
    assert rec["signal"] == rec["signal_used"] == constants.SIGNAL_TOTAL_COUNTS
    assert rec["feature"] == "auto" and rec["feature_used"] == "sobel"  # DAPI: fluorescence
    assert rec["dx"] == "" and float(rec["dx_used"]) == pytest.approx(gala["dx_um"])
    assert int(rec["seed"]) == 42 and rec["params"]["fitness"] == "auto" and int(rec["params"]["num_iterations"]) == 16
    assert rec["versions"]["torch"].startswith("2.13") and rec["versions"]["numpy"] and rec["versions"]["gala"]
    assert gala["device"] == "CPU"
    # the scanpy/squidpy layout comes with every aligned file
    assert aligned.uns["spatial"][LIBRARY_ID]["images"]["hires"].shape == (1800, 2000, 3)


def test_csv_and_zarr_beside_the_h5ad(demo_run) -> None:
    import spatialdata as sd

    folder, out = demo_run
    aligned = ad.read_h5ad(out)
    frame = pd.read_csv(folder / "cells.csv")
    # the CLI's run computes the quality flags: the per-cell confidence comes with the positions
    assert list(frame.columns) == ["cell_id", "x_um", "y_um", "x_px", "y_px", "confidence"]
    np.testing.assert_allclose(frame["confidence"], aligned.obs[constants.CONFIDENCE_KEY], atol=1e-5)  # CSV: 6 digits
    assert frame["confidence"].between(0.0, 1.0).all()
    np.testing.assert_allclose(frame[["x_px", "y_px"]], aligned.obsm[constants.ALIGNED_KEY], atol=1e-5)
    sdata = sd.read_zarr(folder / "cells.zarr")
    he = sd.transform(sdata["cells_he"], to_coordinate_system="he_pixels")
    np.testing.assert_allclose(np.c_[he.geometry.x, he.geometry.y], aligned.obsm[constants.ALIGNED_KEY], atol=0.01)


def test_replay_demo_matches(demo_run, capsys) -> None:
    folder, out = demo_run
    code, err = _replay(out, DAPI, MERFISH_H5AD, folder / "again.h5ad", capsys)
    assert code == 0, err
    assert "replay matches: max |Δ spatial_he| = " in err and "on CPU (recorded: CPU)" in err
    a = ad.read_h5ad(out).obsm[constants.ALIGNED_KEY]
    b = ad.read_h5ad(folder / "again.h5ad").obsm[constants.ALIGNED_KEY]
    assert np.abs(a - b).max() < MATCH_TOLERANCE_PX


def test_replay_refuses_other_files(demo_run, capsys, tmp_path: Path) -> None:
    folder, out = demo_run
    other = tmp_path / "other.jpg"
    data = bytearray(DAPI.read_bytes())
    data[-3] ^= 0xFF  # one byte changed (in the JPEG's tail: still an image)
    other.write_bytes(bytes(data))
    code, err = _replay(out, other, MERFISH_H5AD, tmp_path / "x.h5ad", capsys)
    assert code == 2 and "is not the file this alignment was made from" in err and "Traceback" not in err
    assert not (tmp_path / "x.h5ad").exists()
    code, err = _replay(out, DAPI, out, tmp_path / "x.h5ad", capsys)  # the aligned file as the cells
    assert code == 2 and "cells file" in err
    code, err = _replay(out, DAPI, MERFISH_H5AD, out, capsys, "--overwrite")  # never over its own record
    assert code == 2 and "input" in err
    code, err = _replay(MERFISH_H5AD, DAPI, MERFISH_H5AD, tmp_path / "x.h5ad", capsys)
    assert code == 2 and "not an aligned .h5ad" in err


def test_replay_reports_a_difference(demo_run, capsys, tmp_path: Path) -> None:
    """A record whose positions were changed by 0.01 px: the replay says it differs (exit 1)."""
    folder, out = demo_run
    changed = tmp_path / "changed.h5ad"
    aligned = ad.read_h5ad(out)
    aligned.obsm[constants.ALIGNED_KEY] = aligned.obsm[constants.ALIGNED_KEY] + 0.01
    aligned.write_h5ad(changed)
    code, err = _replay(changed, DAPI, MERFISH_H5AD, tmp_path / "again.h5ad", capsys)
    assert code == 1 and "replay DIFFERS: max |Δ spatial_he| = 0.0141 px" in err


def test_replay_validation_case(tmp_path: Path, capsys) -> None:
    """A validation case (real H&E, nuclei-derived cells, rotated, with a smooth warp)."""
    from tests.validation.cases import get_case
    from tests.validation.runners import write_image

    case = get_case("nuclei-os1_he-r-60-s1-w20")
    image, h5ad = tmp_path / "he.png", tmp_path / "cells.h5ad"
    write_image(case.image, image)
    case.adata.write_h5ad(h5ad)
    out = _align(image, h5ad, tmp_path, "--signal", "cell density")
    rec = ad.read_h5ad(out).uns[constants.UNS_KEY]["replay"]
    assert rec["signal"] == constants.SIGNAL_DENSITY and rec["feature_used"] == "hematoxylin+tissue"
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(image, moved / "renamed.png")  # the checksum, not the name, identifies the file
    code, err = _replay(out, moved / "renamed.png", h5ad, tmp_path / "again.h5ad", capsys)
    assert code == 0, err
    a = ad.read_h5ad(out).obsm[constants.ALIGNED_KEY]
    b = ad.read_h5ad(tmp_path / "again.h5ad").obsm[constants.ALIGNED_KEY]
    assert np.abs(a - b).max() < MATCH_TOLERANCE_PX


def test_replay_with_landmarks(tmp_path: Path, capsys) -> None:
    """A run started from landmarks (init mode) replays only with the same landmarks file."""
    from gala_engine.demo import DEMO_DIR, load_demo, truth_px_xy
    from gala_engine.landmarks import Landmarks, write_landmarks

    demo = load_demo("visium_tiny")
    image, h5ad = DEMO_DIR / "visium_tiny" / "tissue_lowres_image.png", DEMO_DIR / "visium_tiny" / "squidpy_visium_tiny.h5ad"
    idx = [3, 27, 55, 81]
    lm = Landmarks(truth_px_xy(demo)[idx] + np.random.default_rng(0).normal(0, 1.0, (4, 2)),
                   np.asarray(demo.adata.obsm["spatial"], np.float64)[idx])
    pairs = write_landmarks(tmp_path / "pairs.csv", lm)
    out = _align(image, h5ad, tmp_path, "--landmarks", str(pairs))
    rec = ad.read_h5ad(out).uns[constants.UNS_KEY]["replay"]["landmarks"]
    assert rec["mode"] == "init" and rec["landmarks"]["sha256"] == _sha(pairs)
    code, err = _replay(out, image, h5ad, tmp_path / "again.h5ad", capsys)
    assert code == 2 and "give it with --landmarks" in err
    code, err = _replay(out, image, h5ad, tmp_path / "again.h5ad", capsys, "--landmarks", str(pairs))
    assert code == 0 and "replay matches" in err, err


def test_zarr_refusals_and_late_failure(tmp_path: Path, capsys, monkeypatch) -> None:
    """--zarr is checked before any work (never a folder that is not a store, never the other outputs); a late
    failure says that the .h5ad was written and why the store was not."""
    from gala_engine import sdata
    from gala_engine.demo import DEMO_DIR

    image, h5ad = DEMO_DIR / "visium_tiny" / "tissue_lowres_image.png", DEMO_DIR / "visium_tiny" / "squidpy_visium_tiny.h5ad"
    (tmp_path / "results").mkdir()
    (tmp_path / "replay.toml").write_text(REPLAY_TOML)
    base = ["align", "--image", str(image), "--h5ad", str(h5ad), "--params", str(tmp_path / "replay.toml"), "-q",
            "--device", "cpu", "--no-xenium-matrix"]
    for zarr, extra, message in ((tmp_path / "results", ["--overwrite"], "is not a zarr store"),
                                 (tmp_path / "a.h5ad", [], "also another output"),
                                 (tmp_path / "nowhere" / "x.zarr", [], "does not exist")):
        capsys.readouterr()
        assert main([*base, "--out", str(tmp_path / "a.h5ad"), "--zarr", str(zarr), *extra]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "a.h5ad").exists()

    def full_disk(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sdata, "write_spatialdata", full_disk)
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "a.h5ad"), "--zarr", str(tmp_path / "a.zarr")]) == 2
    err = capsys.readouterr().err
    assert "wrote " in err and "--zarr" in err and "No space left on device" in err and "Traceback" not in err
    assert ad.read_h5ad(tmp_path / "a.h5ad").n_obs == 100 and not (tmp_path / "a.zarr").exists()


def test_a_record_from_before_the_count_scale_replays_on_linear_counts() -> None:
    from gala_engine.replay import REPLAY_KEY, _params_from

    old = {REPLAY_KEY: {"params": {"num_generations": 12}}}
    assert _params_from(old, None).count_scale == "linear"
    new = {REPLAY_KEY: {"params": {"num_generations": 12, "count_scale": "auto"}}}
    assert _params_from(new, None).count_scale == "auto"
