"""``uns['gala']['signal_info']`` and ``gala_report.json``: the target signal's informativeness and, for several
channels, their names and mix weights — after a real (short) ``align`` run, read back from the written files."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from gala_engine import constants
from gala_engine.cli import main
from gala_engine.flatness import FLAT_LEVEL
from gala_engine.signals import rank_signals

from .conftest import DAPI, MERFISH_H5AD

TINY_TOML = "num_generations = 3\nga_restarts = 1\nrefine_iterations = 6\nnum_iterations = 0\nscan_iterations = 3\n"


def _align(tmp_path: Path, signal: str, *extra: str) -> ad.AnnData:
    params = tmp_path / "tiny.toml"
    params.write_text(TINY_TOML)
    out = tmp_path / "o.h5ad"
    code = main(["align", "--image", str(DAPI), "--h5ad", str(MERFISH_H5AD), "--out", str(out), "-q",
                 "--params", str(params), "--signal", signal, "--device", "cpu", *extra])
    assert code == 0
    return ad.read_h5ad(out)


def test_gene_list_signal_records_score_channels_and_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    aligned = _align(tmp_path, "Slc17a7,Gfap", "--report", str(tmp_path / "rep"))
    capsys.readouterr()
    gala = aligned.uns[constants.UNS_KEY]
    info = gala["signal_info"]
    assert info["signal"] == "Slc17a7,Gfap"
    assert [str(c) for c in info["channels"]] == ["Slc17a7", "Gfap"]
    np.testing.assert_allclose(np.asarray(info["channel_weights"], np.float64), [0.5, 0.5])  # equal mix, 1/K
    # the same score the Data page ranks the signal by, on the recorded raster pixel size
    expected = rank_signals(ad.read_h5ad(MERFISH_H5AD), ["Slc17a7,Gfap"], dx=float(gala["dx_um"]))[0].score
    assert float(info["informativeness"]) == pytest.approx(expected, rel=1e-9)
    assert 0 < expected and bool(info["flat"]) == (expected < FLAT_LEVEL)
    assert gala["replay"]["signal_used"] == "Slc17a7,Gfap"  # the replay record is unchanged beside it
    report = json.loads((tmp_path / "rep" / "gala_report.json").read_text())
    assert report["signal_info"]["channels"] == ["Slc17a7", "Gfap"]
    assert report["signal_info"]["channel_weights"] == pytest.approx([0.5, 0.5])
    assert report["signal_info"]["informativeness"] == pytest.approx(float(info["informativeness"]), rel=1e-12)


def test_single_channel_signal_records_its_score_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    aligned = _align(tmp_path, constants.SIGNAL_DENSITY)
    capsys.readouterr()
    gala = aligned.uns[constants.UNS_KEY]
    info = gala["signal_info"]
    assert info["signal"] == constants.SIGNAL_DENSITY and "channels" not in info and "channel_weights" not in info
    expected = rank_signals(ad.read_h5ad(MERFISH_H5AD), [constants.SIGNAL_DENSITY], dx=float(gala["dx_um"]))[0].score
    assert float(info["informativeness"]) == pytest.approx(expected, rel=1e-9)
