"""``--signal``: gene lists and ``pca[:k]``, usage errors, unknown genes, the "too flat to align" warning."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from gala_engine import constants
from gala_engine.cli import _parser, main
from gala_engine.demo import DEMO_DIR

from .conftest import DAPI, MERFISH_H5AD

VISIUM_H5AD = DEMO_DIR / "visium_dg" / "giotto_mini_visium.h5ad"
VISIUM_HE = DEMO_DIR / "visium_dg" / "deg_image2.png"
TINY_TOML = "num_generations = 3\nga_restarts = 1\nrefine_iterations = 6\nnum_iterations = 0\nscan_iterations = 3\n"


@pytest.mark.parametrize("value", ["EPCAM,KRT8", " EPCAM, KRT8 ", "pca", "pca:3", "Slc17a7", "cell density"])
def test_signal_option_accepts_lists_and_pca(value: str) -> None:
    args = _parser().parse_args(["align", "--image", "i.png", "--h5ad", "c.h5ad", "--out", "o.h5ad",
                                 "--signal", value])
    assert args.signal == value.strip()


@pytest.mark.parametrize("value, words", [("pca:0", "1–20"), ("A,,B", "empty gene"), ("A,B,A", "more than once")])
def test_malformed_signal_is_a_usage_error(value: str, words: str, capsys: pytest.CaptureFixture) -> None:
    code = main(["align", "--image", str(DAPI), "--h5ad", str(MERFISH_H5AD), "--out", "o.h5ad", "--signal", value])
    assert code == 2
    assert words in capsys.readouterr().err


def test_unknown_genes_of_a_list_named_with_close_matches(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "o.h5ad"
    code = main(["align", "--image", str(DAPI), "--h5ad", str(MERFISH_H5AD), "--out", str(out), "-q",
                 "--signal", "Slc17a7,Gfapp"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gala-align: error:"), err
    assert "'Gfapp' (close matches: ['Gfap'" in lines[0]
    assert not out.exists()


def test_flat_signal_warns_and_names_a_better_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An evenly packed grid of Visium spots weighted by cell density: too flat; the CLI says so and names the
    best-ranked candidate; a pca signal on the same data aligns without the warning."""
    params = tmp_path / "tiny.toml"
    params.write_text(TINY_TOML)
    out = tmp_path / "o.h5ad"
    code = main(["align", "--image", str(VISIUM_HE), "--h5ad", str(VISIUM_H5AD), "--out", str(out), "-q",
                 "--params", str(params), "--signal", constants.SIGNAL_DENSITY, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    warning = next(ln for ln in err.splitlines() if "too flat to align" in ln)
    assert warning.startswith("gala-align: warning:") and "Try the signal '" in warning
    assert ad.read_h5ad(out).obsm[constants.ALIGNED_KEY].shape[1] == 2

    code = main(["align", "--image", str(VISIUM_HE), "--h5ad", str(VISIUM_H5AD), "--out", str(out), "-q",
                 "--params", str(params), "--signal", "pca:2", "--device", "cpu", "--overwrite"])
    err = capsys.readouterr().err
    assert code == 0 and "too flat" not in err, err
    assert np.isfinite(ad.read_h5ad(out).obsm[constants.ALIGNED_KEY]).all()
