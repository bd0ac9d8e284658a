"""Channel gains: does one fluorescence channel's brightness change the other's cells?

Each flowcatchR frame (8-bit, channel 0 platelets, 1 leukocytes) is written as 16-bit
camera counts: platelets = value × 16 + 100, leukocytes = value × G + 100 for each G of
``GAINS`` (the leukocyte channel ¼ to 16 times as bright as the platelet channel). Each
16-bit stack is mapped to [0, 1] by two rules: one 0.1–99.9 percentile range shared by
both channels (napari-bloodcell up to session 15) and one range per channel (rule (F) of
docs/preregistrations/session16.md), each from the whole stack. Detections of each cell
type are matched by centroid (``match_centroids``, 3 px) to the original 8-bit frame's
(value / 255) and summed over the frames: recall, precision and F1. A mapping that keeps
channels independent scores the same at every G.

Frames 3 and 10 are left out by default (as in bench_dim_fluorescence.py).

Usage: ``python benchmarks/bench_channel_gain.py [--data DIR] [--frames 0 1 …]``
(writes ``benchmarks/results/channel_gain.json``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from _common import write_result
from bench_dim_fluorescence import CELL_TYPES, flowcatchr_arguments, matched_counts

from napari_bloodcell.reading import intensity_mapping
from napari_bloodcell.segmentation import segment_frame

GAINS = (4, 16, 64, 256)
PLATELET_GAIN = 16
OFFSET = 100  # a camera's dark level
CHANNELS = {"platelet": 0, "leukocyte": 1}


def sixteen_bit(stack_uint8: np.ndarray, gain: int) -> np.ndarray:
    """(T, Y, X, 2) uint16 counts of the platelet and leukocyte channels."""
    counts = stack_uint8[..., :2].astype(np.uint16)
    return np.stack(
        [counts[..., 0] * PLATELET_GAIN + OFFSET, counts[..., 1] * gain + OFFSET], axis=-1
    )


def shared_range(stack: np.ndarray) -> np.ndarray:
    return intensity_mapping(stack).apply(stack)


def range_per_channel(stack: np.ndarray) -> np.ndarray:
    channels = [intensity_mapping(stack[..., c]).apply(stack[..., c]) for c in range(2)]
    return np.stack(channels, axis=-1)


RULES = {"shared range": shared_range, "range per channel": range_per_channel}


def cells(frame: np.ndarray) -> pd.DataFrame:
    found = segment_frame(frame, "fluorescence", channels=CHANNELS).cells
    return found[["cell_type", "centroid_y", "centroid_x"]]


def bench(stack_uint8: np.ndarray, frames: list[int]) -> list[dict]:
    """One row per (gain, rule, cell type), counts summed over ``frames``."""
    references = {t: cells(stack_uint8[t, ..., :2].astype(np.float32) / 255) for t in frames}
    rows = []
    for gain in GAINS:
        stack = sixteen_bit(stack_uint8, gain)
        for rule, mapped in ((rule, mapping(stack)) for rule, mapping in RULES.items()):
            totals = {cell_type: {"tp": 0, "fp": 0, "fn": 0} for cell_type in CELL_TYPES}
            for t in frames:
                found = cells(mapped[t])
                for cell_type, total in totals.items():
                    for key, value in matched_counts(references[t], found, cell_type).items():
                        total[key] += value
            rows += [_scores(gain, rule, cell_type, c) for cell_type, c in totals.items()]
    return rows


def _scores(gain: int, rule: str, cell_type: str, c: dict) -> dict:
    recall = c["tp"] / max(c["tp"] + c["fn"], 1)
    precision = c["tp"] / max(c["tp"] + c["fp"], 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "leukocyte_gain": gain,
        "rule": rule,
        "cell_type": cell_type,
        **c,
        "recall": round(recall, 3),
        "precision": round(precision, 3),
        "f1": round(f1, 3),
    }


def main() -> int:
    stack, frames = flowcatchr_arguments(__doc__.splitlines()[0])
    rows = bench(stack, frames)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    lowest = table.groupby(["rule", "cell_type"])["f1"].min()
    print("\nlowest F1 over the gains:\n" + lowest.to_string())
    write_result("channel_gain", {"frames": frames, "gains": list(GAINS), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
