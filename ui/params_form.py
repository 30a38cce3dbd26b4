"""The Align form, generated from :class:`gala_engine.params.AlignParams` (defaults, help, limits)
and the per-gene search ranges."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import streamlit as st

from gala_engine.features import tissue_extent
from gala_engine.params import AlignParams
from gala_engine.search import GENE_NAMES, fill_gene_space
from gala_engine.section import SectionRasters

from . import state

GROUP_TITLES = {"ga": "Genetic algorithm (global search)", "lddmm": "LDDMM (local deformation)", "general": "General"}
# shown outside the "advanced" expander of each group (the published tutorial's knobs)
MAIN = {"num_generations", "sol_per_pop", "ga_restarts", "fitness", "refine_iterations",
        "num_iterations", "a", "epV", "sigmaR", "sigmaM", "sigmaB", "num_repeats", "random_seed"}
GENE_LABELS = {"angle": "angle (°)", "sy": "scale y (µm/px)", "sx": "scale x (µm/px)",
               "ty": "shift y (µm)", "tx": "shift x (µm)"}
DEFAULT_GENES: dict[str, Any] = {"angle_low": -180.0, "angle_high": 180.0, "flips": True,
                                 **{f"{g}_{e}": None for g in GENE_NAMES[1:] for e in ("low", "high")}}

_FIELDS = {f.name: f for f in dataclasses.fields(AlignParams)}
_DEFAULTS = AlignParams().to_dict()


def stored_params() -> dict[str, Any]:
    """The chosen parameter values (defaults from AlignParams on first use)."""
    return st.session_state.setdefault(state.PARAMS, dict(_DEFAULTS))


def stored_genes() -> dict[str, Any]:
    """The chosen gene ranges (auto on first use)."""
    return st.session_state.setdefault(state.GENES, dict(DEFAULT_GENES))


def _label(name: str) -> str:
    return name.replace("_", " ")


def _widget(name: str, value: Any) -> Any:
    """One input for one AlignParams field; returns its current value (None = automatic)."""
    f = _FIELDS[name]
    meta, kind, key = f.metadata, str(f.type), f"w_p_{name}"
    helptext = meta["help"]
    if "choices" in meta:
        choices = list(meta["choices"])
        return st.selectbox(_label(name), choices, index=choices.index(value) if value in choices else 0,
                            help=helptext, key=key)
    if name == "device":
        opts = ["auto", "cpu", "cuda"]
        pick = st.selectbox("device", opts, index=opts.index(value or "auto"), help=helptext, key=key)
        return None if pick == "auto" else pick
    if kind == "bool":
        return st.checkbox(_label(name), value=bool(value), help=helptext, key=key)
    if kind.startswith("int"):
        lo = meta.get("min")
        return int(st.number_input(_label(name), value=int(value), min_value=None if lo is None else int(lo),
                                   step=1, help=helptext, key=key))
    if kind.startswith("float"):
        lo, hi = meta.get("min"), meta.get("max")
        out = st.number_input(
            _label(name) + (" (empty = auto)" if "None" in kind else ""),
            value=None if value is None else float(value), min_value=None if lo is None else float(lo),
            max_value=None if hi is None else float(hi), format="%g", help=helptext, key=key,
            placeholder="auto",
        )
        return None if out is None else float(out)
    text = st.text_input(_label(name) + " (empty = none)", value=value or "", help=helptext, key=key)
    return text.strip() or None


def params_inputs() -> dict[str, Any]:
    """Draw the grouped parameter inputs (inside a form); return the entered values."""
    values = stored_params()
    out: dict[str, Any] = {}
    for group, title in GROUP_TITLES.items():
        names = AlignParams.group(group)
        with st.expander(title, expanded=group != "general"):
            main = [n for n in names if n in MAIN]
            cols = st.columns(3)
            for i, name in enumerate(main):
                with cols[i % 3]:
                    out[name] = _widget(name, values.get(name, _DEFAULTS[name]))
            with st.popover(f"Advanced {group.upper()} settings"):
                for name in (n for n in names if n not in MAIN):
                    out[name] = _widget(name, values.get(name, _DEFAULTS[name]))
    return out


def auto_gene_space(rasters: SectionRasters, mode: str) -> list[dict]:
    """The ranges the engine would pick by itself for these rasters."""
    space = fill_gene_space(None, rasters.xI, rasters.xJ, mode=mode,
                            source_extent=tissue_extent(rasters.I, rasters.xI) if mode == "extent" else None)
    return space.as_dicts()


def gene_inputs(auto: list[dict]) -> dict[str, Any]:
    """Draw the per-gene range inputs (inside a form); return the entered values."""
    g = stored_genes()
    out: dict[str, Any] = {}
    with st.expander("Search ranges of the 5 genes (empty = automatic, from the data)", expanded=False):
        out["flips"] = st.checkbox("allow flips (negative scales: mirrored image)", value=g["flips"], key="w_g_flips")
        for i, name in enumerate(GENE_NAMES):
            c1, c2, c3 = st.columns([2, 2, 3])
            a_lo, a_hi = auto[i]["low"], auto[i]["high"]
            with c1:
                out[f"{name}_low"] = st.number_input(f"{GENE_LABELS[name]} low", value=g[f"{name}_low"],
                                                     format="%g", placeholder=f"auto {a_lo:.3g}",
                                                     key=f"w_g_{name}_low")
            with c2:
                out[f"{name}_high"] = st.number_input(f"{GENE_LABELS[name]} high", value=g[f"{name}_high"],
                                                      format="%g", placeholder=f"auto {a_hi:.3g}",
                                                      key=f"w_g_{name}_high")
            with c3:
                st.caption(f"automatic: [{a_lo:.3g}, {a_hi:.3g}]")
    return out


def gene_space(values: dict[str, Any], auto: list[dict]) -> list[dict]:
    """Five ``{'low','high'}`` dicts for the engine from the form values and the automatic ranges."""
    space = []
    for i, name in enumerate(GENE_NAMES):
        lo = values.get(f"{name}_low")
        hi = values.get(f"{name}_high")
        lo = auto[i]["low"] if lo is None else float(lo)
        hi = auto[i]["high"] if hi is None else float(hi)
        if name in ("sy", "sx") and not values.get("flips", True):
            hi = abs(hi)
            lo = max(lo, 0.1 * hi)
        if not np.isfinite([lo, hi]).all() or lo >= hi:
            raise ValueError(f"The range of {GENE_LABELS[name]} is empty: low {lo:g} must be below high {hi:g}.")
        space.append({"low": lo, "high": hi})
    return space
