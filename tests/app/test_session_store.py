"""The session store and session files: a zip round trip of a real run (uploaded data files included), and
hostile files refused with a clear message (path traversal, unexpected or oversized members, lying sizes,
encryption, bad JSON or fields, pickled or missing results); ids never used as paths; expiry and size cap."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gala_engine.demo import load_demo
from gala_engine.params import AlignParams
from gala_engine.section import align_section, prepare_section
from ui import landmarks as lm
from ui import session_store as store
from ui import state
from ui.data import demo_dataset, upload_dataset


@pytest.fixture(scope="module")
def run_result():
    demo = load_demo("visium_tiny")
    r = prepare_section(demo.adata, __import__("gala_engine.io", fromlist=["read_image"]).read_image(demo.image_path))
    return align_section(r, AlignParams(num_generations=3, sol_per_pop=10, num_parents_mating=5, ga_restarts=1,
                                        refine_iterations=3, num_iterations=3, seed_population=False))


def _state(data, result) -> dict:
    return {state.DATA: data, state.SETTINGS: dict(state.DEFAULT_SETTINGS),
            state.PARAMS: AlignParams.fast_check().to_dict(), state.GENES: {"flips": False, "angle_low": -30.0},
            state.HISTORY: [{"run": 3, "state": "done", "fitness": 0.5, "data_id": data.uid}],
            state.RESULTS: {3: (data.uid, result)}, state.SELECTED_RUN: 3, state.RUN_COUNTER: 3,
            lm.PAIRS: {data.uid: [{"name": "1", "image_x": 1.0, "image_y": 2.0, "cells_x": 3.0, "cells_y": 4.0}]}}


def test_zip_round_trip_of_an_upload_keeps_data_runs_and_landmarks(run_result, tmp_path, monkeypatch):
    monkeypatch.setattr("ui.data.session_tmpdir", lambda: tmp_path)
    demo = load_demo("visium_tiny")
    demo.adata.write_h5ad(tmp_path / "c.h5ad")
    data = upload_dataset("cells.h5ad", (tmp_path / "c.h5ad").read_bytes(), "he.png", demo.image_path.read_bytes())
    raw = store.session_zip(_state(data, run_result))
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        assert sorted(zf.namelist()) == ["data/cells.h5ad", "data/image.png", "manifest.json", "results/run_3.npz"]
    b = store.read_zip(raw, tmp_path / "open")
    assert b.data["kind"] == "upload" and b.data["uid"] == data.uid and b.data["cells_name"] == "cells.h5ad"
    assert b.data_files["cells"].read_bytes() == (tmp_path / "c.h5ad").read_bytes()
    uid, result = b.results[3]
    assert uid == data.uid
    np.testing.assert_array_equal(result.A, run_result.A)
    np.testing.assert_array_equal(result.v, run_result.v)
    assert b.params == AlignParams.fast_check().to_dict() and b.genes == {"flips": False, "angle_low": -30.0}
    assert b.selected_run == 3 and b.run_counter == 3 and b.history[0]["fitness"] == 0.5
    assert b.landmarks[data.uid][0]["cells_y"] == 4.0


def test_store_folder_round_trip_and_incremental_writes(run_result, tmp_path):
    data = demo_dataset("visium_tiny")
    folder = tmp_path / ("a" * 32)
    ss = _state(data, run_result)
    store.save_dir(folder, ss)
    npz = folder / "results" / "run_3.npz"
    t0 = npz.stat().st_mtime_ns
    ss[state.SELECTED_RUN] = None
    store.save_dir(folder, ss)
    assert npz.stat().st_mtime_ns == t0  # results are written once
    b = store.read_dir(folder)
    assert b.data == {"kind": "demo", "uid": data.uid, "name": data.name, "not_kept": None, "demo": "visium_tiny"}
    assert b.selected_run is None and 3 in b.results
    del ss[state.RESULTS][3]
    store.save_dir(folder, ss)
    assert not npz.exists()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return buf.getvalue()


def _manifest(**over) -> bytes:
    m = {"format": store.FORMAT, "version": store.VERSION, "data": {"kind": "none"}, "history": [], "results": {}}
    m.update(over)
    return json.dumps(m).encode()


@pytest.mark.parametrize("members, message", [
    ({"manifest.json": _manifest(), "../evil.txt": b"x"}, "unexpected entry"),
    ({"manifest.json": _manifest(), "data/../../x.h5ad": b"x"}, "unexpected entry"),
    ({"manifest.json": _manifest(), "/etc/passwd": b"x"}, "unexpected entry"),
    ({"results/run_1.npz": b"x"}, "no manifest"),
    ({"manifest.json": b"{not json"}, "not valid JSON"),
    ({"manifest.json": json.dumps({"format": "other"}).encode()}, "not a GALA Studio session"),
    ({"manifest.json": _manifest(version=99)}, "version 99"),
    ({"manifest.json": _manifest(results={"1": "abc"})}, "missing"),
    ({"manifest.json": _manifest(results={"1": "../x"}), "results/run_1.npz": b"x"}, "dataset id"),
    ({"manifest.json": _manifest(results={"1": "abc"}), "results/run_1.npz": b"not an npz"}, "run_1.npz"),
    ({"manifest.json": _manifest(data={"kind": "demo", "uid": "u", "name": "n", "demo": "../../x"})}, "data.demo"),
    ({"manifest.json": _manifest(data={"kind": "shell", "uid": "u", "name": "n"})}, "data.kind"),
    ({"manifest.json": _manifest(history=[{"run": {"nested": 1}}])}, "history row 1"),
    ({"manifest.json": _manifest(genes={"angle_low": "1e309"})}, "genes.angle_low"),
    ({"manifest.json": _manifest(settings={"reduce": -3})}, "settings.reduce"),
    ({"manifest.json": _manifest(data={"kind": "upload", "uid": "u", "name": "n", "cells_name": "c",
                                       "image_name": "i", "files": True})}, "missing"),
])
def test_hostile_session_files_are_refused_with_a_clear_message(members, message, tmp_path):
    with pytest.raises(store.SessionError, match=message):
        store.read_zip(_zip(members), tmp_path)
    assert not any(p.name == "evil.txt" for p in tmp_path.parent.rglob("evil.txt"))


def test_a_pickled_result_is_refused(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, A=np.array([object()], dtype=object))
    raw = _zip({"manifest.json": _manifest(results={"1": "abc"}), "results/run_1.npz": buf.getvalue()})
    with pytest.raises(store.SessionError, match="run_1.npz"):
        store.read_zip(raw, tmp_path)


def test_sizes_are_checked_on_the_bytes_read_not_the_zip_claims(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "MAX_MANIFEST_BYTES", 1000)
    raw = _zip({"manifest.json": _manifest(pad="x" * 5000)})
    with pytest.raises(store.SessionError, match="larger than 1,000 bytes"):
        store.read_zip(raw, tmp_path)
    # a zip whose header claims a small size: the read itself stops at the limit
    big = bytearray(_zip({"manifest.json": _manifest(pad="x" * 5000)}))
    src = store._ZipSource(bytes(big))
    src.infos["manifest.json"].file_size = 10
    with pytest.raises(store.SessionError, match="larger than|cannot be read"):  # our limit or zipfile's own check
        src.read("manifest.json", 1000)
    with pytest.raises(store.SessionError, match="at most"):
        store.read_zip(b"x" * 2000, tmp_path, max_bytes=1000)
    with pytest.raises(store.SessionError, match="not a readable zip"):
        store.read_zip(b"PK\x03\x04garbage", tmp_path)


def test_encrypted_members_are_refused(tmp_path):
    raw = bytearray(_zip({"manifest.json": _manifest()}))
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers: 'encrypted' bit
        at = raw.index(sig) + flag_at
        raw[at] |= 0x1
    with pytest.raises(store.SessionError, match="encrypted"):
        store.read_zip(bytes(raw), tmp_path)


def test_bad_saved_params_fall_back_to_the_standard_settings_with_a_note(tmp_path):
    b = store.read_zip(_zip({"manifest.json": _manifest(params={"num_parents_mating": 500, "sol_per_pop": 10})}),
                       tmp_path)
    assert b.params == AlignParams().to_dict() and "not valid" in b.notes[0]


def test_ids_are_random_hex_and_never_paths(tmp_path):
    ids = {store.new_id() for _ in range(50)}
    assert len(ids) == 50 and all(store.valid_id(i) for i in ids)
    for bad in ("../" * 10 + "etc", "a" * 31, "A" * 32, "a" * 33, None, 5, "a" * 31 + "/"):
        assert not store.valid_id(bad)
        with pytest.raises(ValueError):
            store.session_dir(bad, root=tmp_path)


def test_sweep_expires_old_sessions_and_caps_the_store(tmp_path, monkeypatch):
    now = time.time()
    folders = {}
    for i, age_h in enumerate((100, 10, 5, 1)):
        f = tmp_path / (f"{i}" * 32)
        f.mkdir()
        (f / "blob").write_bytes(b"x" * 1000)
        os.utime(f, (now - age_h * 3600, now - age_h * 3600))
        folders[age_h] = f
    (tmp_path / "not-a-session").mkdir()
    monkeypatch.setenv(store.TTL_ENV, "72")
    monkeypatch.setenv(store.STORE_CAP_ENV, str(2500 / 2**30))  # room for two sessions of 1000 bytes
    removed = store.sweep(root=tmp_path, keep=folders[1].name, now=now)
    assert set(removed) == {folders[100], folders[10]}  # expired, then the oldest beyond the cap
    assert folders[5].exists() and folders[1].exists() and (tmp_path / "not-a-session").exists()
    assert isinstance(Path(store.store_root()), Path)
