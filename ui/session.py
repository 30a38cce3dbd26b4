"""This browser session's link to the session store (see :mod:`ui.session_store`): the id in the URL, restore
on a refresh, save after each run of the script, and the "Save session" / "Open session" controls."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import streamlit as st

from gala_engine.errors import GalaInputError

from . import landmarks as lm
from . import session_store as store
from . import state
from .data import DataError, demo_dataset, server_dataset, session_tmpdir, set_dataset, stored_dataset

log = logging.getLogger(__name__)
QUERY_KEY = "sid"
_SAVED = "gala_session_saved"  # signature of what was last written to the store
MAX_SESSION_FILE_MB = 1200


def _load_data(b: store.Bundle):
    """The bundle's dataset read again (None with a note when it cannot be)."""
    d = b.data
    if d["kind"] == "none":
        return None
    if d.get("not_kept"):
        b.notes.append(f"The data '{d['name']}' were not kept ({d['not_kept']}): load them again; "
                       "the runs are kept and come back with them.")
        return None
    try:
        if d["kind"] == "demo":
            return demo_dataset(d["demo"])
        if d["kind"] == "server":
            return server_dataset(d["cells"], d["image"], d["options"])
        if not b.data_files:
            b.notes.append(f"The uploaded files of '{d['name']}' are not in the session: upload them again.")
            return None
        return stored_dataset(b.data_files["cells"], b.data_files["image"], cells_name=d["cells_name"],
                              image_name=d["image_name"], image_options=d["options"], uid=d["uid"])
    except DataError as err:
        b.notes.append(f"The data could not be loaded again: {err}")
        return None


def apply(b: store.Bundle) -> None:
    """Make the bundle this session's state (data, settings, runs, landmarks)."""
    from .budget import _USED
    from .params_form import DEFAULT_GENES, sync_widgets

    ss = st.session_state
    ss[state.SETTINGS] = {**state.DEFAULT_SETTINGS, **b.settings}
    ss[state.PARAMS] = b.params
    ss[state.GENES] = {**DEFAULT_GENES, **b.genes}
    ss[state.HISTORY] = b.history
    ss[state.RESULTS] = dict(b.results)
    ss[state.RUN_COUNTER] = max(int(ss.get(state.RUN_COUNTER, 0) or 0), b.run_counter)
    ss[state.SELECTED_RUN] = b.selected_run
    ss[_USED] = max(float(ss.get(_USED, 0.0) or 0.0), b.budget_used_s)
    ss[lm.PAIRS] = {uid: [lm._clean(r, i) for i, r in enumerate(rows)] for uid, rows in b.landmarks.items()}
    ss[lm.VERSION] = int(ss.get(lm.VERSION, 0)) + 1
    ss.pop(state.RASTERS, None)
    ss.pop(state.MEMO, None)
    sync_widgets()
    data = _load_data(b)
    if data is not None:
        set_dataset(data)
    else:
        ss[state.DATA] = None
    if b.notes:
        ss[state.SESSION_NOTE] = " ".join(b.notes)


def attach() -> str:
    """Give this session its id (restoring the stored session named in the URL on its first run); keep the URL's
    ``?sid=`` in step. Returns the id."""
    ss = st.session_state
    sid = ss.get(state.SESSION_ID)
    if sid is None:
        asked = st.query_params.get(QUERY_KEY)
        folder = store.session_dir(asked) if store.valid_id(asked) else None
        if folder is not None and (folder / store.MANIFEST).is_file():
            sid = asked
            try:
                apply(store.read_dir(folder))
                ss[state.AUTOLOADED] = True  # the stored data, not the demo
            except (store.SessionError, GalaInputError, OSError) as err:
                ss[state.SESSION_NOTE] = f"The saved session could not be restored: {err}"
            job = store.job_of(sid)
            if job is not None:  # a run started before the refresh: follow it here
                ss[state.JOB] = job
        else:
            if asked:
                ss[state.SESSION_NOTE] = "The session in this link has expired or does not exist: a new one started."
            sid = store.new_id()
            try:
                store.sweep(keep=sid)
            except OSError:
                log.exception("session store sweep failed")
        ss[state.SESSION_ID] = sid
    if st.query_params.get(QUERY_KEY) != sid:
        st.query_params[QUERY_KEY] = sid
    return sid


def autosave() -> None:
    """Write the session to the store if it changed since the last write (cheap when nothing changed)."""
    ss = st.session_state
    sid = ss.get(state.SESSION_ID)
    if not store.valid_id(sid):
        return
    job = ss.get(state.JOB)
    if job is not None and job.running:
        store.register_job(sid, job)
    try:
        manifest = store.manifest_from_state(ss)
        sig = repr(manifest)
        if ss.get(_SAVED) == sig:
            return
        store.save_dir(store.session_dir(sid), ss)
        ss[_SAVED] = sig
    except Exception:  # noqa: BLE001 — saving must never break the page; the next run tries again
        log.exception("saving session %s failed", sid)


def open_session_file(name: str, raw: bytes) -> None:
    """Replace this session's work by a session file's (checked as hostile input); raises SessionError."""
    work = Path(tempfile.mkdtemp(prefix="open_", dir=session_tmpdir()))  # removed with the session
    try:
        bundle = store.read_zip(raw, work, max_bytes=MAX_SESSION_FILE_MB * 2**20)
    except store.SessionError as err:
        shutil.rmtree(work, ignore_errors=True)
        raise store.SessionError(f"'{name}' cannot be opened: {err}") from None
    apply(bundle)
    st.session_state.pop(_SAVED, None)


def session_controls() -> None:
    """"Save session" (a zip of settings, landmarks and results) and "Open session" (Data page)."""
    c1, c2 = st.columns(2)
    with c1:
        snapshot = {k: st.session_state[k] for k in store.state_keys() if k in st.session_state}  # the click's
        # callable runs outside this script run: it gets a plain copy, not st.session_state
        st.download_button("Save session (.zip)", data=lambda: store.session_zip(snapshot),
                           file_name="gala_session.zip", mime="application/zip", on_click="ignore",
                           key="dl_session", icon=":material/save:",
                           help="Settings, landmarks, all runs and (for uploads) the data files, to open another day.")
    with c2:
        up = st.file_uploader("Open session (.zip)", type=["zip"], key="up_session",
                              help="Replaces this session's data, settings and runs by the file's.")
    if up is not None and st.session_state.get("gala_session_opened") != up.file_id:
        st.session_state["gala_session_opened"] = up.file_id
        try:
            with st.spinner("Opening the session…"):
                open_session_file(up.name, up.getvalue())
        except store.SessionError as err:
            st.session_state[state.DATA_ERROR] = str(err)
        else:
            st.session_state.pop(state.DATA_ERROR, None)
        st.rerun()
