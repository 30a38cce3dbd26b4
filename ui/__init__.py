"""Small helpers the Streamlit pages share: state keys, data loading, the job runner, figures.

The pages (``pages/*.py``) are short scripts of UI and session state; everything they share lives
here. Nothing in this package is imported by :mod:`gala_engine`.
"""
