"""The Align page's settings in the biologist's words: a preset in front, every number behind "Advanced".

Defaults, limits and the method's help come from :class:`gala_engine.params.AlignParams`; this module only
adds plain labels (the method's names, e.g. ``sigmaR``, appear in the help text and exported files) and
the search ranges of the pose (rotation, scale, mirror, shift).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import streamlit as st

from gala_engine.errors import GalaInputError
from gala_engine.features import tissue_extent
from gala_engine.paramfile import dumps_params, loads_params
from gala_engine.params import PRESETS, AlignParams
from gala_engine.search import GENE_NAMES, fill_gene_space
from gala_engine.section import SectionRasters

from . import state

DEFAULT_PRESET = "standard"
PRESET_HELP = {
    "fast check": "A quick first look: one short search, fine-tuned, no warp (seconds on a small section).",
    "standard": "Recommended: several searches, fine-tuning, a warp kept only if it helps.",
    "thorough (published settings)": "The paper's settings (1000 search rounds, 2000 warp steps, twice): slow.",
}
PRESET_SHORT = {"fast check": "Seconds: one search, no warp.", "standard": "Recommended for most sections.",
                "thorough (published settings)": "The paper's settings: slow."}  # one line under the choice

# plain label of every AlignParams field (the method's name goes into the help text)
LABELS: dict[str, str] = {
    "num_generations": "search rounds per search",
    "sol_per_pop": "candidate poses per round",
    "num_parents_mating": "poses kept to breed each round",
    "mutation_probability": "chance a pose value is re-drawn",
    "crossover_probability": "chance two poses are mixed",
    "fitness": "how a pose is scored",
    "ga_restarts": "independent searches",
    "ga_max_pixels": "search picture size (pixels a side)",
    "max_anisotropy": "largest stretch (y scale / x scale)",
    "ga_blur": "blur while searching (pixels)",
    "refine_iterations": "fine-tuning steps after the search",
    "gene_space_mode": "default search ranges",
    "seed_population": "start from a scan of rotations",
    "scan_iterations": "steps per scanned rotation",
    "stop_criteria": "extra stop rule",
    "ga_patience": "end a search after this many rounds without progress (0 = never)",
    "ga_operators": "search implementation",
    "num_iterations": "warp steps (0 = no warp, rotation/scale/shift only)",
    "a": "smoothness of the warp (image px)",
    "epV": "warp step size",
    "sigmaR": "how far cells may move (larger = freer warp)",
    "sigmaM": "expected mismatch of matching pixels",
    "sigmaB": "expected mismatch of background pixels",
    "muB": "background brightness of the cells' picture",
    "nt": "time steps of the warp",
    "contrast": "match brightness and contrast of the two pictures",
    "lddmm_patience": "end the warp after this many steps without progress (0 = never)",
    "lddmm_coarse": "coarse-to-fine factor of the warp (1 = off)",
    "lddmm_coarse_fraction": "share of warp steps at the coarse level",
    "lddmm_validate": "keep the warp only if it helps",
    "lddmm_tol": "smallest progress that counts (relative)",
    "nuclei_fit": "finally move each cell onto its nucleus in the image",
    "num_repeats": "repeats of search + warp",
    "count_scale": "how total counts weigh each cell",
    "random_seed": "random seed (same seed, same result)",
    "dtype": "number precision",
    "device": "compute on",
}
CHOICE_WORDS: dict[str, dict[Any, str]] = {
    "fitness": {"auto": "automatic (recommended)", "tissue": "tissue outline and overlap",
                "ncc": "whole-section correlation", "ncc_support": "correlation under the cells only",
                "sse": "as published (squared difference)"},
    "gene_space_mode": {"extent": "from the tissue's size", "compatible": "as published (wide)"},
    "ga_operators": {"vectorized": "fast", "pygad": "as published (slower)"},
    "dtype": {"float32": "single precision", "float64": "double precision"},
    "count_scale": {"auto": "try both, keep the better fit (recommended)", "linear": "as counted (as published)",
                    "log": "log(1 + counts)"},
    "device": {"auto": "automatic (GPU when there is one)", "cpu": "CPU", "cuda": "GPU (CUDA)"},
}
SECTIONS = {"ga": "Search for the pose (rotation, scale, mirror, shift)", "lddmm": "Warp (local deformation)",
            "general": "General"}
GENE_LABELS = {"angle": "rotation (°)", "sy": "scale y (µm per pixel)", "sx": "scale x (µm per pixel)",
               "ty": "shift y (µm)", "tx": "shift x (µm)"}
DEFAULT_GENES: dict[str, Any] = {"angle_low": -180.0, "angle_high": 180.0, "flips": True,
                                 **{f"{g}_{e}": None for g in GENE_NAMES[1:] for e in ("low", "high")}}
MAX_TOML_BYTES = 64 * 1024

_FIELDS = {f.name: f for f in dataclasses.fields(AlignParams)}
_DEFAULTS = AlignParams().to_dict()


def stored_params() -> dict[str, Any]:
    """The chosen parameter values (the standard preset on first use)."""
    return st.session_state.setdefault(state.PARAMS, dict(_DEFAULTS))


def stored_genes() -> dict[str, Any]:
    """The chosen search ranges (automatic on first use)."""
    return st.session_state.setdefault(state.GENES, dict(DEFAULT_GENES))


def help_text(name: str) -> str:
    """The engine's help for one field, with the method's own name (as in the paper and the TOML file)."""
    return f"{_FIELDS[name].metadata['help']}\n\nMethod parameter: `{name}`."


def matching_preset(values: dict[str, Any]) -> str | None:
    """The preset whose settings equal ``values`` (None: edited, i.e. custom)."""
    for name in PRESETS:
        if AlignParams.preset(name).to_dict() == {**_DEFAULTS, **values}:
            return name
    return None


def _widget_value(name: str, value: Any) -> Any:
    """A stored parameter value as its widget holds it (device None → 'auto', text None → '')."""
    kind = str(_FIELDS[name].type)
    if name == "device":
        return "auto" if value is None else value
    if "choices" in _FIELDS[name].metadata or value is None:
        return "" if value is None and kind.startswith("str") else value
    if kind == "bool":
        return bool(value)
    if kind.startswith("int"):
        return int(value)
    if kind.startswith("float"):
        return float(value)
    return value


def sync_widgets() -> None:
    """Write the stored values into the parameter widgets' state, so the page shows them (the browser keeps a
    widget's old value unless its state is set; call before the widgets are drawn, e.g. in a callback)."""
    values = stored_params()
    for name in _FIELDS:
        st.session_state[f"w_p_{name}"] = _widget_value(name, values.get(name, _DEFAULTS[name]))
    g = stored_genes()
    for key in DEFAULT_GENES:
        st.session_state[f"w_g_{key}"] = g.get(key, DEFAULT_GENES[key])


def set_params(params: AlignParams, *, genes: dict[str, Any] | None = None) -> None:
    """Make ``params`` (and optionally ``genes``) the form's values."""
    st.session_state[state.PARAMS] = params.to_dict()
    if genes is not None:
        st.session_state[state.GENES] = {**DEFAULT_GENES, **genes}
    sync_widgets()


def _current_values() -> dict[str, Any]:
    """The stored values with this rerun's widget edits on top (the widgets are drawn further down the page)."""
    values = dict(stored_params())
    for name in _FIELDS:
        key = f"w_p_{name}"
        if key in st.session_state:
            value = st.session_state[key]
            values[name] = None if (name == "device" and value == "auto") or value == "" else value
    return values


def preset_picker() -> str | None:
    """The preset choice; choosing one sets every number. Returns the preset the values match (None: custom).

    The radio's key names the preset the values match, so a browser's stale choice (a rerun cut short while the
    user typed) belongs to a widget that no longer exists and cannot re-apply a preset over fresh edits."""
    current = matching_preset(_current_values())
    options = list(PRESETS)
    picked = st.radio("Settings", options, key=f"w_preset_{options.index(current) if current else 'custom'}",
                      index=options.index(current) if current else None, horizontal=True,
                      help="\n\n".join(f"**{k}**: {v}" for k, v in PRESET_HELP.items()))
    if picked is not None and picked != current:
        set_params(AlignParams.preset(picked))
        st.rerun()
    st.caption(PRESET_SHORT[current] if current else "Custom settings (edited under **Advanced** below).")
    return current


def mirror_checkbox() -> bool:
    """'Allow a mirrored section' (the search tries flipped poses too); stored with the search ranges."""
    g = stored_genes()
    st.session_state.setdefault("w_g_flips", g["flips"])
    g["flips"] = st.checkbox("allow a mirrored section", key="w_g_flips",
                             help="Also try the section flipped over (mirror image): needed when the cells' "
                                  "coordinates and the image are mirrored relative to each other. Method: "
                                  "negative scales in the `gene_space`.")
    return g["flips"]


def _widget(name: str, value: Any) -> Any:
    """One input for one AlignParams field; returns its current value (None = automatic).

    The widget's state is seeded from the stored value (never passed as ``value=`` as well: Streamlit warns)."""
    f = _FIELDS[name]
    meta, kind, key = f.metadata, str(f.type), f"w_p_{name}"
    if key not in st.session_state:
        st.session_state[key] = _widget_value(name, value)
    label, helptext = LABELS.get(name, name.replace("_", " ")), help_text(name)
    words = CHOICE_WORDS.get(name, {})
    if "choices" in meta:
        return st.selectbox(label, list(meta["choices"]), help=helptext, key=key,
                            format_func=lambda c: words.get(c, c))
    if name == "device":
        pick = st.selectbox(label, ["auto", "cpu", "cuda"], help=helptext, key=key,
                            format_func=lambda c: words.get(c, c))
        return None if pick == "auto" else pick
    if kind == "bool":
        return st.checkbox(label, help=helptext, key=key)
    if kind.startswith("int"):
        lo = meta.get("min")
        return int(st.number_input(label, min_value=None if lo is None else int(lo), step=1, help=helptext, key=key))
    if kind.startswith("float"):
        lo, hi = meta.get("min"), meta.get("max")
        nullable = "None" in kind
        out = st.number_input(
            label + (" (empty = automatic)" if nullable else ""), min_value=None if lo is None else float(lo),
            max_value=None if hi is None else float(hi), format="%g", help=helptext, key=key,
            placeholder="automatic", **({"value": None} if nullable else {}),
        )
        return None if out is None else float(out)
    text = st.text_input(label + " (empty = none)", help=helptext, key=key)
    return text.strip() or None


def params_inputs() -> dict[str, Any]:
    """Draw every parameter (inside the Advanced expander), store and return the entered values."""
    values = stored_params()
    out: dict[str, Any] = {}
    for group, title in SECTIONS.items():
        st.markdown(f"**{title}**")
        cols = st.columns(3)
        for i, name in enumerate(AlignParams.group(group)):
            with cols[i % 3]:
                out[name] = _widget(name, values.get(name, _DEFAULTS[name]))
    st.session_state[state.PARAMS] = {**values, **out}
    return out


def auto_gene_space(rasters: SectionRasters, mode: str) -> list[dict]:
    """The ranges the engine would pick by itself for these rasters."""
    space = fill_gene_space(None, rasters.xI, rasters.xJ, mode=mode,
                            source_extent=tissue_extent(rasters.I, rasters.xI) if mode == "extent" else None)
    return space.as_dicts()


def gene_inputs(auto: list[dict]) -> dict[str, Any]:
    """Draw the search-range inputs (rotation, scale, shift; empty = automatic); store and return them."""
    g = stored_genes()
    out: dict[str, Any] = {"flips": g["flips"]}
    st.markdown("**Where to search** (empty = automatic, from the data; a negative scale = a mirrored section)")
    for i, name in enumerate(GENE_NAMES):
        c1, c2, c3 = st.columns([2, 2, 3])
        a_lo, a_hi = auto[i]["low"], auto[i]["high"]
        for end in ("low", "high"):
            st.session_state.setdefault(f"w_g_{name}_{end}", g[f"{name}_{end}"])
        out[f"{name}_low"] = c1.number_input(f"{GENE_LABELS[name]}: from", value=None, format="%g",
                                             placeholder=f"auto {a_lo:.3g}", key=f"w_g_{name}_low")
        out[f"{name}_high"] = c2.number_input(f"{GENE_LABELS[name]}: to", value=None, format="%g",
                                              placeholder=f"auto {a_hi:.3g}", key=f"w_g_{name}_high")
        c3.caption(f"automatic: {a_lo:.3g} to {a_hi:.3g}")
    st.session_state[state.GENES] = {**g, **out}
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
            raise ValueError(f"The range of {GENE_LABELS[name]} is empty: 'from' {lo:g} must be below 'to' {hi:g}.")
        space.append({"low": lo, "high": hi})
    return space


def params_toml() -> bytes:
    """The stored parameters as the TOML file the command line reads (``gala-align --params``)."""
    try:
        params = AlignParams.from_dict(stored_params())
    except (GalaInputError, TypeError):
        params = AlignParams()
    return dumps_params(params).encode("utf-8")


def import_toml(raw: bytes, name: str) -> AlignParams:
    """Parameters from an uploaded TOML file (size-capped; names and values checked by the engine).

    Raises
    ------
    GalaInputError
        Too big, not UTF-8 TOML, unknown names or values out of range.
    """
    if len(raw) > MAX_TOML_BYTES:
        raise GalaInputError(f"'{name}' is {len(raw):,} bytes; a parameter file is at most {MAX_TOML_BYTES:,}.")
    return loads_params(raw, source=f"'{name}'")


def toml_controls() -> None:
    """Export the settings as TOML (for ``gala-align --params``) or import such a file."""
    c1, c2 = st.columns(2)
    c1.download_button("Export settings (.toml)", data=params_toml(), file_name="gala_params.toml",
                       mime="application/toml", on_click="ignore", key="dl_params_toml",
                       help="The file the command line reads: `gala-align … --params gala_params.toml`.")
    up = c2.file_uploader("Import settings (.toml)", type=["toml"], key="up_params_toml")
    if up is not None and st.session_state.get("gala_params_toml_seen") != up.file_id:
        st.session_state["gala_params_toml_seen"] = up.file_id
        try:
            set_params(import_toml(up.getvalue(), up.name))
        except GalaInputError as err:
            st.session_state[state.FORM_ERROR] = f"Settings not imported: {err}"
        else:
            st.session_state.pop(state.FORM_ERROR, None)
            st.rerun()
