"""GALA Studio's alignment engine: spatial transcriptomics ⇄ histology image.

Public API with the names of the published GALA tutorial.
"""

from __future__ import annotations

from .errors import GalaInputError
from .events import ProgressEvent
from .features import image_feature, normalize
from .params import AlignParams
from .pipeline import gala, to_cpu
from .raster import choose_dx, rasterize
from .transform import (
    transform_image_source_to_target,
    transform_image_target_to_source,
    transform_points_source_to_target,
    transform_points_target_to_source,
)

__version__ = "0.1.0"

__all__ = [
    "AlignParams",
    "GalaInputError",
    "ProgressEvent",
    "choose_dx",
    "gala",
    "image_feature",
    "normalize",
    "rasterize",
    "to_cpu",
    "transform_image_source_to_target",
    "transform_image_target_to_source",
    "transform_points_source_to_target",
    "transform_points_target_to_source",
]
