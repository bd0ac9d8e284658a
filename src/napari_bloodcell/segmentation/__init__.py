"""Segmentation stage: label WBCs, RBCs and platelets in one frame (scikit-image only).

``segment_frame`` takes a float (Y, X, C) frame in [0, 1] and returns a :class:`Segmentation`
(instance labels plus a per-cell table in pixel units). Smears (bright background, stained
RGB) and fluorescence frames (dark background, one channel per cell role) are supported.
"""

from ._frame import (
    MODALITIES,
    PIXEL_SIZE_RANGE_UM,
    check_one_role_per_channel,
    check_pixel_size,
    checked_frame,
    detect_modality,
    segment_frame,
)
from ._regions import CELL_TYPES, TABLE_DTYPES, Segmentation
from .fluorescence import FLUORESCENCE_REFERENCE_PIXEL_SIZE_UM, FluorescenceParams
from .smear import REFERENCE_PIXEL_SIZE_UM, SmearParams, central_stained_object

__all__ = [
    "CELL_TYPES",
    "FLUORESCENCE_REFERENCE_PIXEL_SIZE_UM",
    "MODALITIES",
    "PIXEL_SIZE_RANGE_UM",
    "REFERENCE_PIXEL_SIZE_UM",
    "TABLE_DTYPES",
    "FluorescenceParams",
    "Segmentation",
    "SmearParams",
    "central_stained_object",
    "check_one_role_per_channel",
    "check_pixel_size",
    "checked_frame",
    "detect_modality",
    "segment_frame",
]
