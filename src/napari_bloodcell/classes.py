"""Cell classes and their fixed display colours (overlays, napari layers, plots)."""

from __future__ import annotations

CLASS_COLOURS: dict[str, str] = {
    "neutrophil": "#1f77b4",
    "eosinophil": "#ff7f0e",
    "lymphocyte": "#2ca02c",
    "monocyte": "#9467bd",
    "basophil": "#8c564b",
    "ig": "#e377c2",
    "erythroblast": "#bcbd22",
    "platelet": "#d62728",
    "rbc": "#f4a6a6",
    "wbc": "#17becf",
    "leukocyte": "#17becf",
    "uncertain": "#7f7f7f",
}
"""Fixed class → colour mapping; classes not listed get :data:`OTHER_COLOUR`."""

OTHER_COLOUR = "#000000"

CELL_TYPE_COLOURS: dict[str, str] = {"wbc": "#17becf", "rbc": "#f4a6a6", "platelet": "#d62728"}


def class_colour(name: str) -> str:
    """Hex colour of a class (or cell type) name."""
    return CLASS_COLOURS.get(str(name).lower(), OTHER_COLOUR)
