"""Validation suite for issue 11: cases built from real images by several generators, with known truth."""
