"""Dim recordings: does fluorescence detection hold when the same frames are darker?

Each flowcatchR frame is segmented at full brightness (the reference) and again with its
values multiplied by 0.5, 0.25 and 0.1, both unrounded (as 12-bit counts / 65535 would be)
and rounded to 8 bits (a dim 8-bit export). Detections of each cell type are matched to the
frame's own full-brightness detections by centroid (``match_centroids``, 3 px) and summed
over the frames: recall (reference cells still found) and precision (dim detections that
are reference cells). A detector independent of brightness scores 1.0 everywhere.

Frames 3 and 10 are left out by default (they were used to design the rules of
docs/preregistrations/session15.md).

Usage: ``python benchmarks/bench_dim_fluorescence.py [--data DIR] [--frames 0 1 …]``
(writes ``benchmarks/results/dim_fluorescence.json``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from _common import DEFAULT_DATA, require, write_result

from napari_bloodcell.metrics import match_centroids
from napari_bloodcell.segmentation import segment_frame

BRIGHTNESS_FACTORS = (0.5, 0.25, 0.1)
ROUNDINGS = ("unrounded", "8-bit")
MATCH_RADIUS_PX = 3.0
CELL_TYPES = ("platelet", "wbc")
DEFAULT_FRAMES = [t for t in range(20) if t not in (3, 10)]


def detections(frame_uint8: np.ndarray, factor: float, rounding: str) -> pd.DataFrame:
    """Cell types and centroids (px) of one (Y, X, C) uint8 frame scaled by ``factor``."""
    scaled = frame_uint8.astype(np.float64) * factor
    if rounding == "8-bit":
        scaled = np.round(scaled)
    frame = (scaled / 255.0).astype(np.float32)
    return segment_frame(frame, "fluorescence").cells[["cell_type", "centroid_y", "centroid_x"]]


def matched_counts(reference: pd.DataFrame, dim: pd.DataFrame, cell_type: str) -> dict:
    """tp / fp / fn of ``dim``'s cells of one type against ``reference``'s."""

    def centres(cells: pd.DataFrame) -> np.ndarray:
        return cells.loc[cells.cell_type == cell_type, ["centroid_y", "centroid_x"]].to_numpy()

    match = match_centroids(centres(reference), centres(dim), MATCH_RADIUS_PX)
    return {key: match[key] for key in ("tp", "fp", "fn")}


def bench(stack: np.ndarray, frames: list[int]) -> list[dict]:
    """One row per (brightness, rounding, cell type), counts summed over ``frames``."""
    totals: dict[tuple, dict] = {}
    for t in frames:
        reference = detections(stack[t], 1.0, "unrounded")
        for factor in BRIGHTNESS_FACTORS:
            for rounding in ROUNDINGS:
                dim = detections(stack[t], factor, rounding)
                for cell_type in CELL_TYPES:
                    counts = matched_counts(reference, dim, cell_type)
                    total = totals.setdefault(
                        (factor, rounding, cell_type), dict.fromkeys(counts, 0)
                    )
                    for key, value in counts.items():
                        total[key] += value
    rows = []
    for (factor, rounding, cell_type), c in totals.items():
        found = c["tp"] + c["fp"]
        rows.append(
            {
                "brightness": factor,
                "rounding": rounding,
                "cell_type": cell_type,
                **c,
                "recall": round(c["tp"] / max(c["tp"] + c["fn"], 1), 3),
                "precision": round(c["tp"] / found, 3) if found else None,
            }
        )
    return rows


def flowcatchr_arguments(description: str) -> tuple[np.ndarray, list[int]]:
    """The flowcatchR stack (T, Y, X, C) uint8 (channel 0 platelets, 1 leukocytes) from
    ``--data`` and the ``--frames`` to use, parsed from the command line."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared/data folder")
    parser.add_argument("--frames", type=int, nargs="+", default=DEFAULT_FRAMES)
    args = parser.parse_args()
    path = require(args.data / "flowcatchr_mesentery" / "mesentery_TYXC.tif")
    return tifffile.imread(path), args.frames


def main() -> int:
    stack, frames = flowcatchr_arguments(__doc__.splitlines()[0])
    rows = bench(stack, frames)
    print(pd.DataFrame(rows).to_string(index=False))
    write_result("dim_fluorescence", {"frames": frames, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
