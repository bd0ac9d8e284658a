"""Overlay images: cell outlines coloured by class on the frame, for a quick visual check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from skimage.segmentation import find_boundaries

from .classes import table_class_colours

MIN_OVERLAY_WIDTH_PX = 640
DPI = 100


def render_overlay(frame: np.ndarray, labels: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """Draw each cell's outline in its class colour on the frame, with a darkened line
    just outside it on the background (a pale pink red-cell outline on a pink red cell
    was invisible).

    frame : (Y, X, C) float in [0, 1]: C ≥ 3 drawn from its first 3 channels as RGB, C = 2
        as red and green (both channels of a two-channel time-lapse shown), C = 1 as grey.
    labels : (Y, X) instance labels; table : rows of this frame (``label``, ``cell_class``).
    Returns (Y, X, 3) uint8 RGB.
    """
    if frame.shape[-1] >= 3:
        rgb = frame[..., :3]
    elif frame.shape[-1] == 2:
        rgb = np.concatenate([frame, np.zeros_like(frame[..., :1])], axis=-1)
    else:
        rgb = np.repeat(frame[..., :1], 3, axis=-1)
    out = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    if table.empty:
        return out
    colours = table_class_colours(table)
    colour_of_label = np.zeros((int(labels.max()) + 1, 3), dtype=np.uint8)
    for label, cell_class in zip(table["label"], table["cell_class"], strict=True):
        colour_of_label[int(label)] = _hex_to_rgb(colours[str(cell_class)])
    halo = find_boundaries(labels, mode="outer") & (labels == 0)
    out[halo] //= HALO_DARKENING
    edges = find_boundaries(labels, mode="inner")
    out[edges] = colour_of_label[labels[edges]]
    return out


HALO_DARKENING = 3
"""The background just outside an outline is divided by this (contrast for any colour)."""


def save_overlay_png(
    path: Path, frame: np.ndarray, labels: np.ndarray, table: pd.DataFrame
) -> Path:
    """Save an overlay as PNG; cells classified by the CNN get their class and confidence
    written next to them (small frames are then enlarged so the text stays readable);
    without such cells the outlined frame is written as it is (no text: no matplotlib,
    which cost as much as the analysis). Written under a temporary name, then renamed."""
    image = render_overlay(frame, labels, table)
    annotated = table[np.isfinite(table["confidence"].to_numpy(dtype=float))]
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        if annotated.empty:
            from PIL import Image

            with open(tmp, "wb") as file:  # closed here also when the disk is full
                Image.fromarray(image).save(file, format="PNG")
        else:
            _save_annotated(tmp, image, annotated, table)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _save_annotated(path: Path, image: np.ndarray, annotated: pd.DataFrame, table) -> None:
    """``image`` (Y, X, 3) with each ``annotated`` cell's class and confidence written
    beside it, as PNG (matplotlib)."""
    from matplotlib.figure import Figure

    height, width = image.shape[:2]
    inches_per_px = max(1.0, MIN_OVERLAY_WIDTH_PX / width) / DPI
    # a Figure without pyplot: no backend switched in the user's process (Jupyter, napari)
    fig = Figure(figsize=(width * inches_per_px, height * inches_per_px), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    colours = table_class_colours(table)
    for row in annotated.itertuples():
        near_right_edge = row.bbox_x0 > 0.75 * width
        ax.text(
            row.bbox_x1 if near_right_edge else row.bbox_x0,
            max(row.bbox_y0 - 3, 8),
            f"{row.cell_class} {row.confidence:.2f}",
            color=colours[str(row.cell_class)],
            fontsize=8,
            ha="right" if near_right_edge else "left",
            fontweight="bold",
            bbox={"facecolor": "white", "alpha": 0.6, "pad": 1, "edgecolor": "none"},
        )
    fig.savefig(path, dpi=DPI, format="png")


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i : i + 2], 16) for i in (0, 2, 4))
