"""Data page: typed gene lists / pca as the target signal, the "too flat" warning, the candidate previews."""

from __future__ import annotations

from gala_engine import constants
from ui import state


def _load_visium_dg(app) -> None:
    app.selectbox(key="w_demo").select("visium_dg").run()
    app.button(key="load_demo").click().run()


def _type_signal(app, text: str) -> None:
    """Type ``text`` into the signal box and press enter: with ``accept_new_options`` the browser sends the typed
    text as the widget's value. (AppTest only selects listed options, so the text is listed first.)"""
    box = app.selectbox(key="w_signal")
    box.options.append(text)
    box.set_value(text).run()


def test_flat_signal_warns_and_the_previews_rank_the_candidates(app):
    _load_visium_dg(app)
    app.selectbox(key="w_signal").select(constants.SIGNAL_DENSITY).run()
    assert not app.exception and not app.error
    flat = [w.value for w in app.warning if "too flat to align" in w.value]
    assert flat and "Try the signal '" in flat[0]  # an evenly packed spot grid weighted by density
    app.toggle(key="w_signal_previews").set_value(True).run()
    assert not app.exception
    previews = app.session_state["gala_memo"]["signal_previews"][1]
    titles = [c.proto.spec for c in app.get("plotly_chart")]
    assert len(titles) >= 2 + len(previews) and len(previews) >= 5  # image, rasters, then one chart per candidate
    scores = [p.score for p in previews]
    assert scores == sorted(scores, reverse=True) and previews[-1].flat  # best first; density last (flat)
    assert any(p.signal == "pca" for p in previews)


def test_typed_gene_list_and_pca_become_the_signal(app):
    _load_visium_dg(app)
    _type_signal(app, "Prkcd,Hpca")
    assert not app.exception and not app.error
    r = app.session_state[state.RASTERS][1]
    assert r.signal == "Prkcd,Hpca" and r.channels.names == ["Prkcd", "Hpca"]
    _type_signal(app, "pca:2")
    assert app.session_state[state.RASTERS][1].channels.names == ["PC1+", "PC1−", "PC2+", "PC2−"]
    _type_signal(app, "Prkcd,NotAGene")
    assert any("NotAGene" in e.value for e in app.error) and not app.exception
