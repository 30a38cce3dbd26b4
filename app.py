"""GALA Studio: align spatial transcriptomics cells to their H&E image in the browser.

Run with ``streamlit run app.py``; the first screen opens on the bundled MERFISH demo.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui import session, state
from ui.data import DataError, demo_dataset, set_dataset
from ui.sidebar import sidebar

# a local file: an icon name would make the browser fetch the favicon from the internet (fails offline)
st.set_page_config(page_title="GALA Studio", page_icon=str(Path(__file__).parent / "assets" / "icon.png"),
                   layout="wide")

session.attach()  # restores the session named in the URL (?sid=…) after a refresh
# less empty margin around the pages, so what a run shows fits a 1024 × 768 screen
st.html("<style>[data-testid='stMainBlockContainer']{padding:2.5rem 1.5rem 3rem 1.5rem}</style>")
if not state.get(state.AUTOLOADED):
    st.session_state[state.AUTOLOADED] = True
    if state.get(state.DATA) is None:
        try:
            set_dataset(demo_dataset())
        except DataError as err:  # the demo ships with the package; this only guards a broken install
            st.session_state[state.DATA_ERROR] = str(err)

pages = [
    st.Page("pages/1_data.py", title="Data", icon=":material/folder_open:", default=True),
    st.Page("pages/2_align.py", title="Align", icon=":material/tune:"),
    st.Page("pages/3_viewer.py", title="Viewer", icon=":material/visibility:"),
    st.Page("pages/4_landmarks.py", title="Landmarks", icon=":material/my_location:"),
]
nav = st.navigation(pages)
if nav.title != "Data":  # a loading error belongs to the Data page's last attempt: stale elsewhere
    st.session_state.pop(state.DATA_ERROR, None)
sidebar()
try:
    nav.run()
finally:  # also after st.stop() / st.rerun(): the store keeps what this run changed
    session.autosave()
