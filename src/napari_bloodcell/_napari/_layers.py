"""Core results → napari ``LayerDataTuple``s (no viewer, no Qt).

Every layer made here carries ``metadata["napari_bloodcell"]`` with a stable ``key``
(role + the image layer's ``unique_id``, never its name: another image of the same name
must not update them), so a second run of the image updates the same layers instead of
adding new ones, and the ``parameters`` of the run (written next to exported tables).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..classes import CLASS_COLOURS, OTHER_COLOUR, UNCERTAIN, class_colours
from ..errors import BloodcellError
from ..table import as_categories

METADATA_KEY = "napari_bloodcell"
TRANSPARENT = "transparent"


def shear_matrix(shear) -> np.ndarray:
    """napari's ``shear`` (the upper-triangle coefficients, row by row, or the full
    upper-triangular matrix) as a square matrix."""
    from napari.utils.transforms.transform_utils import expand_upper_triangular

    shear = np.asarray(shear, dtype=float)
    return shear if shear.ndim == 2 else expand_upper_triangular(shear)


@dataclass(frozen=True)
class Placement:
    """Where outputs go in world coordinates: per-axis scale and translate of the image
    layer's axes that the outputs have.

    ``extra_axes``: positions (ascending) of size-1 axes the outputs get so that they have
    the image's number of axes — napari lines layers up by their last axes. They are the
    image's channel axis when its channels are a slider (a non-RGB layer with a C axis; the
    one plane is stretched over every channel), a singleton axis (Z of size 1), and the
    time axis of one analysed frame of a stack (the plane sits at that frame).
    """

    scale: tuple[float, ...]
    translate: tuple[float, ...]
    extra_axes: tuple[int, ...] = ()
    transform: dict = field(default_factory=dict, hash=False, compare=False)
    """The image layer's ``units``, ``rotate``, ``shear`` and ``affine`` (napari layer
    arguments), for outputs with its number of axes."""

    def labels(self, data):
        """(T,) Y, X label data with the extra axes inserted (a view, still paintable)."""
        if isinstance(data, np.ndarray):
            return np.expand_dims(data, self.extra_axes) if self.extra_axes else data
        from ._label_frames import WithChannelAxis

        for axis in self.extra_axes:
            data = WithChannelAxis(data, axis)
        return data

    def coordinates(self, points: np.ndarray) -> np.ndarray:
        """(N, D) (T,) Y, X coordinates with a 0 inserted for each extra axis."""
        for axis in self.extra_axes:
            points = np.insert(points, axis, 0.0, axis=1)
        return points

    def table_coordinates(self, points: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`coordinates`."""
        return np.delete(points, list(self.extra_axes), axis=1)

    def without_leading_axes(self) -> Placement:
        """This placement without the extra axes before the first output axis (their rows
        and columns of the transform dropped)."""
        leading = 0
        while leading in self.extra_axes:
            leading += 1
        transform = dict(self.transform)
        if leading:
            if "units" in transform:
                transform["units"] = tuple(transform["units"])[leading:]
            if "shear" in transform:
                transform["shear"] = shear_matrix(transform["shear"])
            for name in ("rotate", "shear", "affine"):
                if name in transform:
                    transform[name] = np.asarray(transform[name])[leading:, leading:]
        return Placement(
            self.scale[leading:],
            self.translate[leading:],
            tuple(a - leading for a in self.extra_axes if a >= leading),
            transform,
        )

    @property
    def layer_arguments(self) -> dict:
        """napari layer arguments placing an output: scale, translate and the transform."""
        return {"scale": self.scale, "translate": self.translate, **self.transform}


def class_ids(classes: list[str]) -> dict[str, int]:
    """Label value of each class in the class Labels layer.

    Known classes have fixed values (their rank in CLASS_COLOURS); other classes follow in
    the given order, so appending classes never renumbers earlier ones.
    """
    known = {name: i for i, name in enumerate(CLASS_COLOURS, start=1)}
    others = [c for c in dict.fromkeys(classes) if c not in known]
    extra = {name: len(known) + i for i, name in enumerate(others, start=1)}
    return {name: known.get(name) or extra[name] for name in dict.fromkeys(classes)}


def all_classes(table: pd.DataFrame, model_classes: list[str]) -> list[str]:
    """Classes to show: the model's, then any other class present in the table."""
    present = [str(c) for c in pd.unique(table["cell_class"].astype(str))] if len(table) else []
    return list(dict.fromkeys([*model_classes, *sorted(present)]))


def layer_metadata(
    role: str, image_id: str, parameters: dict, extra_axes: tuple[int, ...] = ()
) -> dict:
    """Metadata marking a layer as this plugin's output ``role`` for the image layer of
    ``unique_id`` ``image_id``, with the run's ``parameters`` and the positions of its extra
    axes (see :class:`Placement`)."""
    return {
        METADATA_KEY: {
            "key": f"{role}:{image_id}",
            "image_id": image_id,
            "parameters": parameters,
            "extra_axes": list(extra_axes),
        }
    }


def placement_of(layer) -> Placement:
    """The placement of a layer (for a result layer of this plugin, with its extra axes)."""
    extra = layer.metadata.get(METADATA_KEY, {}).get("extra_axes", [])
    return Placement(tuple(layer.scale), tuple(layer.translate), tuple(extra), transform_of(layer))


def transform_of(layer) -> dict:
    """A layer's units, rotation, shear and affine, as napari layer arguments."""
    return {
        "units": tuple(str(unit) for unit in layer.units),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
    }


HAND_ADDED_LABEL = 0
"""The ``label`` of a point added by hand in a cells layer's features (a cell's is ≥ 1)."""


def cells_table(data: np.ndarray, features: pd.DataFrame, metadata: dict) -> pd.DataFrame:
    """The per-cell table a cells Points layer shows now: its ``features``, each at the
    position of its point in ``data`` (a point moved by hand moves its cell).

    Points added by hand have no segmented cell behind them and are refused
    (:class:`BloodcellError`) by index: those the widgets saw added carry the label
    :data:`HAND_ADDED_LABEL`; others are copies of another point's row (napari's default
    features for a new point).
    """
    table = features.reset_index(drop=True).copy()
    ours = (metadata or {}).get(METADATA_KEY, {})
    points = Placement((), (), tuple(ours.get("extra_axes", []))).table_coordinates(
        np.asarray(data, dtype=float)
    )
    if len(table) != len(points):
        raise BloodcellError(
            f"the layer holds {len(points)} points but {len(table)} table rows; run the "
            f"analysis again"
        )
    # a point added on another frame copies a row and then takes its own frame: judge the
    # copies by the rows as the analysis wrote them, before the positions are read
    key = [c for c in ("source", "frame", "label") if c in table]
    added = np.zeros(len(table), bool)
    if key:
        added |= table.duplicated(key, keep="first").to_numpy()
    if "label" in table:  # marked, or missing (a point added to a layer without points)
        added |= ~(pd.to_numeric(table["label"], errors="coerce") > HAND_ADDED_LABEL).to_numpy()
    added = np.flatnonzero(added)
    if len(added):
        raise BloodcellError(
            f"point(s) {', '.join(map(str, added[:10]))}{' …' if len(added) > 10 else ''} "
            f"were added by hand and have no segmented cell (no label, size or class of "
            f"their own): delete them, or paint the cell into the instances layer and run "
            f"the analysis again"
        )
    columns = ["frame", "centroid_y", "centroid_x"][-points.shape[1] :] if len(points) else []
    for i, column in enumerate(columns):
        if column in table:
            table[column] = (
                np.round(points[:, i]).astype(int) if column == "frame" else points[:, i]
            )
    pixel_size_um = ours.get("parameters", {}).get("pixel_size_um")
    for column in ("centroid_y", "centroid_x"):
        if pixel_size_um and f"{column}_um" in table:  # the µm position moves with the point
            table[f"{column}_um"] = table[column] * pixel_size_um
    return table


TRACKS_ROLE = "tracks"


def tracks_key(image_id: str) -> str:
    """The key of the tracks layer of image ``image_id`` (see :func:`layer_metadata`)."""
    return f"{TRACKS_ROLE}:{image_id}"


STACK_ROLES = ("stack-instances", "stack-classes", "stack-cells")
"""The roles of a batch's result layers (:class:`~._compute.StackProgress`)."""


def stack_keys(image_id: str) -> set[str]:
    """The keys of the batch result layers of image ``image_id``."""
    return {f"{role}:{image_id}" for role in STACK_ROLES}


def layer_key(metadata: dict) -> str | None:
    """The stable key of a layer made by this plugin (None for other layers)."""
    return (metadata or {}).get(METADATA_KEY, {}).get("key")


def class_label_image(labels: np.ndarray, table: pd.DataFrame, ids: dict[str, int]) -> np.ndarray:
    """(Y, X) instance labels → class ids via the table's ``label`` → ``cell_class``."""
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint8)
    if len(table):
        lookup[table["label"].to_numpy(dtype=np.int64)] = [ids[str(c)] for c in table["cell_class"]]
    return lookup[labels]


def class_colormap(ids: dict[str, int], colours: dict[str, str]):
    """A napari ``DirectLabelColormap`` with one fixed colour per class id."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict = {None: TRANSPARENT, 0: TRANSPARENT}
    color_dict.update({value: colours.get(name, OTHER_COLOUR) for name, value in ids.items()})
    return DirectLabelColormap(color_dict=color_dict)


def point_size(table: pd.DataFrame) -> float:
    """Marker size (data px): a quarter of the median cell diameter, within 4–30 px."""
    if not len(table):
        return 10.0
    return float(np.clip(0.25 * np.median(table["diameter_px"]), 4.0, 30.0))


def result_layers(
    instances: np.ndarray,
    classes_image: np.ndarray,
    table: pd.DataFrame,
    *,
    model_classes: list[str],
    source: str,
    image_id: str,
    placement: Placement,
    parameters: dict,
    role_prefix: str = "",
) -> list[tuple]:
    """Instance labels, class labels and class-coloured points of one analysis of image
    layer ``source`` (its name) of ``unique_id`` ``image_id``.

    ``instances`` / ``classes_image`` are (Y, X) or (T, Y, X); points are (y, x) or
    (frame, y, x) at the cell centroids, with ``features`` = the per-cell table (class
    columns as ``category``).
    """
    stack = instances.ndim == 3
    instances, classes_image = placement.labels(instances), placement.labels(classes_image)
    names = all_classes(table, model_classes)
    ids = class_ids(names)
    colours = class_colours(names)
    features = as_categories(table.reset_index(drop=True))
    features["cell_class"] = features["cell_class"].cat.set_categories(names)
    coordinates = ["frame", "centroid_y", "centroid_x"] if stack else ["centroid_y", "centroid_x"]
    points = table[coordinates].to_numpy(dtype=float).reshape(-1, len(coordinates))
    points = placement.coordinates(points)
    place = placement.layer_arguments

    def meta(role: str, name: str, **kwargs) -> dict:
        return {
            "name": f"{source} {name}",
            "metadata": layer_metadata(
                f"{role_prefix}{role}", image_id, parameters, placement.extra_axes
            ),
            **place,
            **kwargs,
        }

    instance_meta = meta("instances", "stack instances" if stack else "instances", contour=2)
    if not stack:  # in a stack label values repeat per frame: the points carry the table
        instance_meta["features"] = features.rename(columns={"label": "index"})
    class_features = pd.DataFrame({"index": list(ids.values()), "cell_class": list(ids)})
    return [
        (instances, instance_meta, "labels"),
        (
            classes_image,
            meta(
                "classes",
                "stack classes" if stack else "classes",
                colormap=class_colormap(ids, colours),
                features=class_features,
                opacity=0.4,
            ),
            "labels",
        ),
        (
            points,
            meta(
                "cells",
                "stack cells" if stack else "cells",
                features=features,
                # no class at all (no model, no cell): napari cannot colour by an empty category
                **(
                    {"face_color": "cell_class", "face_color_cycle": colours}
                    if names
                    else {"face_color": "white"}
                ),
                border_color="white",
                border_width=0.1,
                size=point_size(table),
            ),
            "points",
        ),
    ]


def legend_html(table: pd.DataFrame, model_classes: list[str]) -> str:
    """Rich-text legend: a colour swatch, the class name and its cell count per class —
    every class of the model when it classified a cell (a 0 is a finding then), else
    the classes present (a fluorescence run does not use the model). A cell the model
    classified has a ``confidence``; segmentation's own classes (a fluorescence platelet,
    also a class of the default model) have none."""
    counts = table["cell_class"].astype(str).value_counts() if len(table) else pd.Series()
    if "confidence" in table:
        classified = bool(table["confidence"].notna().any())
    else:
        classified = any(counts.get(name, 0) for name in [*model_classes, UNCERTAIN])
    if not classified:
        model_classes = []
    names = all_classes(table, model_classes)
    colours = class_colours(names)
    rows = [
        f'<span style="color:{colours[name]}">&#9632;</span> {name}: {int(counts.get(name, 0))}'
        for name in names
    ]
    return "<br>".join(rows) or "no cells"


def tracks_layers(
    tracks: pd.DataFrame, source: str, image_id: str, placement: Placement, parameters: dict
) -> list[tuple]:
    """A napari Tracks layer of ``tracks`` (``tracking.track_table``, at least one row) of
    image layer ``source`` of ``unique_id`` ``image_id`` (see :func:`result_layers`),
    coloured by the class of each track with the fixed class colours (a user model's own
    classes get the colours they have in the points, labels, legend and plot: by their
    place among the model's classes, from ``parameters``).

    napari offers every ``features`` column to colour by, and fails on text: the features
    are the numeric columns of the per-point table with values, and ``<column>_code`` for
    each class column (``cell_type``, ``cell_class``, ``track_class``), coloured by the
    class colours; ``metadata["napari_bloodcell"]["categories"][column]`` lists the class
    names. A code is the middle of its class's band of the colormap: (index + 0.5) / number
    of classes (napari does not rescale values for a colormap of ``colormaps_dict``).
    """
    from napari.utils.colormaps import ensure_colormap

    from ..tracking import tracks_layer_data
    from ..tracking.layers import CATEGORY_FEATURES

    data, features, _ = tracks_layer_data(tracks)
    # time must be the tracks' first axis: axes before it are dropped ((t, y, x) line up
    # with the image's last axes); napari's tracks have at most one more axis (Z)
    placement = placement.without_leading_axes()
    if len(placement.extra_axes) > 1:
        raise BloodcellError(
            "napari's Tracks layer has at most one axis besides T, Y and X, and this image "
            "has more sliders; add it again with fewer, e.g. for T Z C Y X data without its "
            "size-1 Z (viewer.add_image(layer.data[:, 0])) or with one layer per channel "
            "(viewer.add_image(layer.data, channel_axis=2)), and run the batch on that layer"
        )
    data = np.concatenate([data[:, :1], placement.coordinates(data[:, 1:])], axis=1)  # id first
    categories = {
        column: [str(name) for name in features[column].cat.categories]
        for column in CATEGORY_FEATURES
        if column in features
    }
    model_classes = (parameters.get("model") or {}).get("classes", [])
    codes, colormaps = {}, {}
    for column, names in categories.items():
        index = features[column].cat.codes.to_numpy(dtype=float)
        codes[f"{column}_code"] = (index + 0.5) / max(len(names), 1)
        title = "tracks" if column == "track_class" else column
        colormaps[f"{column}_code"] = _class_band_colormap(
            names, f"bloodcell {title}", class_colours([*model_classes, *names])
        )
    numbers = features.select_dtypes("number").dropna(axis="columns", how="all").assign(**codes)
    track_colormap = colormaps["track_class_code"]
    # registered, so that the layer controls show the colours in use, not napari's default
    # "turbo" (which ``color_by`` with ``colormaps_dict`` overrides)
    ensure_colormap(track_colormap)
    metadata = layer_metadata(TRACKS_ROLE, image_id, parameters, placement.extra_axes)
    metadata[METADATA_KEY]["categories"] = categories
    meta = {
        "name": f"{source} tracks",
        "metadata": metadata,
        **placement.layer_arguments,
        "features": numbers,
        "colormaps_dict": colormaps,
        "color_by": "track_class_code",
        "colormap": track_colormap.name,
        "tail_length": 30,
    }
    return [(data, meta, "tracks")]


def _class_band_colormap(names: list[str], title: str, colours: dict[str, str]):
    """A napari ``Colormap`` with one band of 1 / len(names) per class, in its colour of
    ``colours`` (white without classes), named ``"<title>: <names>"``."""
    from napari.utils.colormaps import Colormap

    return Colormap(
        colors=[colours[name] for name in names] or ["#ffffff"],
        controls=np.linspace(0.0, 1.0, max(len(names), 1) + 1),
        interpolation="zero",
        name=f"{title}: {', '.join(names)}",
    )
