""""How it works": three steps, one small picture each (made from the demo by scripts/make_howto_pictures.py)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

ASSETS = Path(__file__).resolve().parent / "assets"
STEPS = (
    ("how_1_pictures.png", "1 · Two comparable pictures",
     "The cells become a picture (their counts on a grid of µm) and the tissue image becomes a small picture of "
     "what the cells should match (nuclei and tissue for H&E, edges for DAPI)."),
    ("how_2_search.png", "2 · Search for the pose",
     "Many candidate poses (orange) — rotation, scale (µm per pixel), mirror, shift — are tried and bred over "
     "search rounds (a genetic algorithm); the best (green) is then fine-tuned. The match score (1 = perfect) "
     "should rise."),
    ("how_3_warp.png", "3 · Warp",
     "A smooth warp then lets cells move locally to follow tissue that was stretched or torn (LDDMM): "
     "the grid shows it on the demo, 20× enlarged. 'Smoothness of the warp' and 'how far cells may move' limit "
     "it; it is kept only if it helps on cells it did not see."),
)


def how_it_works() -> None:
    """Draw the three steps side by side (a picture missing from the install is skipped)."""
    cols = st.columns(len(STEPS))
    for col, (name, title, text) in zip(cols, STEPS, strict=True):
        with col:
            st.markdown(f"**{title}**")
            if (ASSETS / name).is_file():
                st.image(str(ASSETS / name), width="stretch")
            st.caption(text)
