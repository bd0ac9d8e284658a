"""Cell classes and their fixed display colours (overlays, napari layers, plots)."""

from __future__ import annotations

UNCERTAIN = "uncertain"
"""The answer of a classifier that should not decide (confidence below its threshold); no
model class may bear this name."""

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

PLATELET_NAMES = frozenset({"platelet", "platelets", "thrombocyte", "thrombocytes", "plt"})
"""Names (lower case) of the platelet class of a model and of a fluorescence channel role:
a model trained on a ``Platelets/`` folder has a class ``platelets``."""


def is_platelet_name(name) -> bool:
    """Whether a class or role ``name`` means platelets (:data:`PLATELET_NAMES`)."""
    return str(name).lower() in PLATELET_NAMES


def class_key(name) -> str:
    """A class name as classes are matched: lower case, any platelet name (``Platelets``,
    ``thrombocytes`` …) as ``platelet``, so that the class folders of two data sets, a
    folder and a model's class, and a class and its colour match."""
    return "platelet" if is_platelet_name(name) else str(name).lower()


CELL_TYPE_COLOURS: dict[str, str] = {"wbc": "#17becf", "rbc": "#f4a6a6", "platelet": "#d62728"}


def class_colour(name: str) -> str:
    """Hex colour of a class (or cell type) name (any platelet name: the platelets')."""
    return CLASS_COLOURS.get(class_key(name), OTHER_COLOUR)


EXTRA_COLOURS = (
    "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#dbdb8d", "#9edae5",  # tab20's
    "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",  # tab20b's dark ones …
    "#6b6ecf", "#b5cf6b", "#e7ba52", "#d6616b", "#ce6dbd",  # … and middle ones
)  # fmt: skip
"""Colours for classes outside :data:`CLASS_COLOURS` (e.g. a user model's own classes)."""


def extra_colour(index: int) -> str:
    """The colour of the ``index``-th class outside :data:`CLASS_COLOURS`: from
    :data:`EXTRA_COLOURS`, then hues a golden angle apart (distinct for any number)."""
    import colorsys

    if index < len(EXTRA_COLOURS):
        return EXTRA_COLOURS[index]
    hue = (index - len(EXTRA_COLOURS)) * 0.618034 % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.55, 0.8)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def class_colours(classes) -> dict[str, str]:
    """Fixed colour per class: :data:`CLASS_COLOURS`, then :func:`extra_colour` for other
    classes in the given order (so each keeps its colour for a given model)."""
    classes = [str(c) for c in dict.fromkeys(classes)]
    others = [c for c in classes if class_key(c) not in CLASS_COLOURS]
    extra = {c: extra_colour(i) for i, c in enumerate(others)}
    return {c: extra.get(c) or class_colour(c) for c in classes}


def table_class_colours(table) -> dict[str, str]:
    """Colour per ``cell_class`` of a per-cell table (pandas): the model's own classes in
    the model's order (its ``p_<class>`` columns), then the others, as the napari layers
    colour them (a user model's classes kept their colours only within one frame)."""
    model_classes = [str(c).removeprefix("p_") for c in table.columns if str(c).startswith("p_")]
    return class_colours([*model_classes, *table["cell_class"].astype(str)])
