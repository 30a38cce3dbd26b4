"""Safety: no pickle of user data, session folders removed, server paths confined, server config."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from streamlit.testing.v1 import AppTest

from gala_engine.errors import GalaInputError
from gala_engine.section import AlignmentResult
from ui import session_files, state
from ui.data import DataError, resolve_server_path
from ui.session_files import SessionFolder, sweep_stale

from .conftest import APP

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ pickle


def _sources() -> list[Path]:
    files = [ROOT / "app.py", *(ROOT / "pages").glob("*.py")]
    for pkg in ("gala_engine", "ui"):
        files += (ROOT / pkg).rglob("*.py")
    return files


def test_no_pickle_or_torch_load_in_the_code() -> None:
    pattern = re.compile(r"\bimport pickle\b|\bpickle\.|\btorch\.load\b|allow_pickle\s*=\s*True|\bjoblib\.load\b|"
                         r"\bdill\b|\bcloudpickle\b|pd\.read_pickle")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in _sources() for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert len(_sources()) > 20 and not hits, hits
    calls = [line for p in _sources() for line in p.read_text().splitlines() if "np.load(" in line]
    assert all("allow_pickle=False" in line for line in calls), calls  # every numpy load
    # transforms are read member by member from their .npy headers (gala_engine/npzsafe.py), never unpickled
    npzsafe = (ROOT / "gala_engine" / "npzsafe.py").read_text()
    assert "dtype.hasobject" in npzsafe and "read_array_header_1_0" in npzsafe


def test_transform_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:  # unpickling this would create the marker file
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "evil.npz"
    np.savez(bad, A=np.eye(3), A_affine=np.eye(3), v=np.zeros((1, 2, 2, 2)), xv_rows=np.arange(2.0),
             xv_cols=np.arange(2.0), genes=np.zeros(5), header=np.array([Evil()], dtype=object))
    with pytest.raises(GalaInputError, match="pickled Python objects, which are never loaded"):
        AlignmentResult.load_npz(bad)
    assert not marker.exists()
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(GalaInputError, match="not a GALA transform"):
        AlignmentResult.load_npz(tmp_path / "text.npz")


# ---------------------------------------------------------------------------- session folders


def test_session_folder_is_removed_with_its_owner(tmp_path: Path) -> None:
    folder = SessionFolder(tmp_path)
    path = folder.path
    (path / "upload.h5ad").write_bytes(b"x" * 100)
    assert path.is_dir() and path.name.startswith(f"gala_studio_{os.getpid()}_")
    del folder
    gc.collect()
    assert not path.exists()
    other = SessionFolder(tmp_path)
    other.remove()
    other.remove()  # idempotent
    assert not other.path.exists()


def test_sweep_removes_only_folders_of_ended_sessions(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = SessionFolder(tmp_path)
    orphan_here = tmp_path / f"gala_studio_{os.getpid()}_orphan"  # ours, but no session holds it
    dead_proc = tmp_path / f"gala_studio_{dead.pid}_gone"  # its server process has exited
    other_live = tmp_path / f"gala_studio_{os.getppid()}_busy"  # another running server's session
    unrelated = tmp_path / "gala_studio_report.png"  # not a folder
    for p in (orphan_here, dead_proc, other_live):
        p.mkdir()
    unrelated.write_bytes(b"")
    removed = sweep_stale(tmp_path)
    assert sorted(removed) == sorted([orphan_here, dead_proc])
    assert live.path.is_dir() and other_live.is_dir() and unrelated.exists()
    live.remove()


def test_app_session_folder_goes_with_the_session(demo_h5ad_bytes: bytes, png_bytes: bytes) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.file_uploader(key="up_cells").set_value(("cells.h5ad", demo_h5ad_bytes, "application/octet-stream"))
    at.file_uploader(key="up_image").set_value(("he.png", png_bytes, "image/png"))
    at.run()
    at.button(key="load_upload").click().run()
    assert not at.exception and not at.error
    folder = at.session_state[state.TMPDIR]
    path = folder.path
    assert isinstance(folder, SessionFolder) and sorted(p.name for p in path.rglob("*.*")) == ["cells.h5ad", "he.png"]  # (the user's names)
    assert str(path) in session_files._LIVE
    del folder, at  # the session ends: Streamlit drops its state
    gc.collect()
    assert not path.exists()


# ------------------------------------------------------------------------------ server paths


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "cells.h5ad").write_bytes(b"x")
    (tmp_path / "secret.h5ad").write_bytes(b"secret")
    (root / "escape.h5ad").symlink_to(tmp_path / "secret.h5ad")  # a link pointing outside
    (root / "escape_dir").symlink_to(tmp_path)  # a folder link pointing outside
    (root / "inside_link.h5ad").symlink_to(root / "sub" / "cells.h5ad")  # a link that stays inside
    return root


@pytest.mark.parametrize("text", ["sub/cells.h5ad", "./sub/../sub/cells.h5ad", "inside_link.h5ad"])
def test_server_paths_inside_are_allowed(data_root: Path, text: str) -> None:
    assert resolve_server_path(text, root=data_root) == (data_root / "sub" / "cells.h5ad").resolve()


@pytest.mark.parametrize(
    "text",
    ["../secret.h5ad", "sub/../../secret.h5ad", "{tmp}/secret.h5ad", "/etc/passwd", "escape.h5ad",
     "escape_dir/secret.h5ad", "~/.bashrc", "sub/../../data/../secret.h5ad"],
)
def test_server_paths_outside_are_refused(data_root: Path, text: str) -> None:
    text = text.format(tmp=data_root.parent)
    with pytest.raises(DataError, match="outside the data folder"):
        resolve_server_path(text, root=data_root)


@pytest.mark.parametrize("text", ["", "   ", "sub/cells\x00.h5ad", "missing.h5ad", "sub"])
def test_server_paths_that_are_not_files(data_root: Path, text: str) -> None:
    with pytest.raises(DataError, match="inside the data folder|does not exist|not a usable path|is a folder"):
        resolve_server_path(text, root=data_root)


# ------------------------------------------------------------------------------ server config


def test_streamlit_config_limits_uploads_and_keeps_xsrf() -> None:
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = cfg["server"]
    assert server["enableXsrfProtection"] is True
    assert 1 <= server["maxUploadSize"] <= 4096  # MB: a bound exists and is finite
    assert server["maxMessageSize"] >= 200
    assert server.get("enableCORS", True) is True  # never weakened
    assert server.get("headless") is True
    assert server.get("fileWatcherType") == "none"  # no watchdog walking the checkout under load
    assert cfg["runner"]["postScriptGC"] is False  # no full GC after each live redraw
