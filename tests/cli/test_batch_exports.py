"""``gala-align batch --csv --zarr``: per section, the cells CSV and a SpatialData store beside its aligned .h5ad."""

from __future__ import annotations

import csv
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from gala_engine import constants

from .conftest import Synth, run_cli

TINY = "num_generations=3; ga_restarts=1; refine_iterations=6; num_iterations=0; scan_iterations=3"


def test_batch_writes_csv_and_zarr_per_section(synth: Synth, tmp_path: Path) -> None:
    import spatialdata as sd

    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "section,image,h5ad,params,signal\n"
        f'one,{synth.image},{synth.h5ad},"{TINY}",\n'
        f'two,{synth.image},{synth.h5ad},"{TINY}","g0,g1"\n'
    )
    out = tmp_path / "out"
    proc = run_cli("batch", manifest, "--out", out, "--workers", "1", "--threads", "-q", "--device", "cpu",
                   "--csv", "--zarr", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    with (out / "summary.csv").open() as fh:
        assert [r["status"] for r in csv.DictReader(fh)] == ["ok", "ok"]
    for name in ("one", "two"):
        aligned = ad.read_h5ad(out / f"{name}.h5ad")
        cells = pd.read_csv(out / f"{name}.csv")
        assert list(cells.columns[:5]) == ["cell_id", "x_um", "y_um", "x_px", "y_px"]
        assert cells["cell_id"].astype(str).tolist() == list(aligned.obs_names)
        np.testing.assert_allclose(cells[["x_px", "y_px"]].to_numpy(), aligned.obsm[constants.ALIGNED_KEY], atol=1e-5)
        sdata = sd.read_zarr(out / f"{name}.zarr")
        assert sdata["table"].n_obs == aligned.n_obs == len(sdata["cells_he"])
    # a multi-channel row's signal record reaches the .h5ad and the store's table
    info = ad.read_h5ad(out / "two.h5ad").uns[constants.UNS_KEY]["signal_info"]
    assert [str(c) for c in info["channels"]] == ["g0", "g1"]
    zinfo = sd.read_zarr(out / "two.zarr")["table"].uns[constants.UNS_KEY]["signal_info"]
    assert [str(c) for c in zinfo["channels"]] == ["g0", "g1"]

    # a <section>.zarr that is some other folder: refused before any work, even with --overwrite; left as it was
    out2 = tmp_path / "out2"
    (out2 / "one.zarr").mkdir(parents=True)
    (out2 / "one.zarr" / "notes.txt").write_text("mine")
    proc = run_cli("batch", manifest, "--out", out2, "--threads", "-q", "--zarr", "--overwrite", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "'one'" in proc.stderr and "not a zarr store" in proc.stderr
    assert (out2 / "one.zarr" / "notes.txt").read_text() == "mine" and not (out2 / "one.h5ad").exists()

def test_batch_csv_never_over_an_input(synth: Synth, tmp_path: Path) -> None:
    """A section whose <section>.csv would be the manifest itself: refused before any work."""
    out = tmp_path / "out"
    out.mkdir()
    manifest = out / "m.csv"
    manifest.write_text(f'section,image,h5ad,params\nm,{synth.image},{synth.h5ad},"{TINY}"\n')
    before = manifest.read_bytes()
    proc = run_cli("batch", manifest, "--out", out, "--threads", "-q", "--csv", timeout=120)
    assert proc.returncode == 2 and "input" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert manifest.read_bytes() == before and not (out / "m.h5ad").exists()
