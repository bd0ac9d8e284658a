"""napari-bloodcell: segment, crop, classify and track blood cells.

The core stages are plain functions on numpy arrays and pandas tables and import
neither Qt, napari nor TensorFlow at import time:

``reading`` → ``segmentation`` → ``crops`` → ``classification`` → ``table``,
tied together by ``pipeline`` and exposed on the command line by ``cli``.
"""

try:
    from ._version import version as __version__
except ImportError:  # pragma: no cover - source tree without a build
    __version__ = "0.0.0"

__all__ = ["__version__"]
