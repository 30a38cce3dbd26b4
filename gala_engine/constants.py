"""Names of AnnData keys and other magic strings, kept in one place."""

from __future__ import annotations

SPATIAL_KEY = "spatial"  # obsm key of input cell centroids, (x, y) in µm
ALIGNED_KEY = "spatial_he"  # obsm key written by GALA: (x, y) in full-resolution image pixels
ALIGNED_AFFINE_KEY = "spatial_he_affine"  # same, affine stage only (before the LDDMM warp)
CONFIDENCE_KEY = "gala_confidence"  # obs key written by GALA: per-cell confidence of the alignment, 0–1
UNS_KEY = "gala"  # uns key with parameters, matrices, histories, versions
GROUND_TRUTH_KEY = "ground_truth"  # uns key of the bundled demo sets

SIGNAL_TOTAL_COUNTS = "total counts"
SIGNAL_DENSITY = "cell density"
