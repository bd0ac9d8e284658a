"""Cut labelled single-cell windows from the shared BCCD frames for classifier training.

For every WBC box of ``bccd_wbc.csv`` whose subtype is unambiguous, and every
platelet box of ``bccd_objects.csv``, the cell that napari-bloodcell's own
segmentation finds inside the box is cut as a square window (1.5× the crop
``analyze`` would take, so re-cropping during training sees real pixels, not
padding) and saved as ``OUT/<class>/<frame>__<kind><k>.png``. The ``__`` tells
the training split which frame a window came from, so frames never straddle a split.

The windows are derived from the shared data and must stay outside the repository:

    python scripts/cut_bccd_training_crops.py ../shared/data/bccd runs/bccd_crops
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd

from napari_bloodcell.crops import CROP_SCALE
from napari_bloodcell.reading import read_image
from napari_bloodcell.segmentation import segment_frame

CONTEXT = 1.5


def cut_window(frame: np.ndarray, cy: float, cx: float, side: float) -> np.ndarray:
    half = int(round(side / 2))
    padded = np.pad(frame, ((half, half), (half, half), (0, 0)), mode="reflect")
    y, x = int(round(cy)), int(round(cx))
    return padded[y : y + 2 * half, x : x + 2 * half]


def cells_in_boxes(cells: pd.DataFrame, boxes: pd.DataFrame, cell_type: str):
    """For each box, the largest detected cell of ``cell_type`` whose centroid lies inside it."""
    found = []
    candidates = cells[cells["cell_type"] == cell_type]
    for box in boxes.itertuples():
        inside = candidates[
            candidates.centroid_x.between(box.xmin, box.xmax)
            & candidates.centroid_y.between(box.ymin, box.ymax)
        ]
        if len(inside):
            found.append((box, inside.sort_values("area_px").iloc[-1]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bccd", type=Path, help="the shared bccd folder")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    objects = pd.read_csv(args.bccd / "bccd_objects.csv")
    wbc = objects[(objects.cell_type == "WBC") & objects.wbc_subtype.notna()]
    platelets = objects[objects.cell_type == "Platelets"]
    counts: dict[str, int] = {}
    for image_name in sorted(objects.image.unique()):
        frame = read_image(args.bccd / "JPEGImages" / image_name).data[0]
        cells = segment_frame(frame, "smear").cells
        stem = Path(image_name).stem
        jobs = [
            (box.wbc_subtype.lower(), f"wbc{box.object_id}", cell)
            for box, cell in cells_in_boxes(cells, wbc[wbc.image == image_name], "wbc")
        ] + [
            ("platelet", f"plt{box.object_id}", cell)
            for box, cell in cells_in_boxes(
                cells, platelets[platelets.image == image_name], "platelet"
            )
        ]
        for class_name, tag, cell in jobs:
            side = CONTEXT * CROP_SCALE * cell.crop_diameter_px
            window = cut_window(frame, cell.centroid_y, cell.centroid_x, side)
            target = args.out / class_name / f"{stem}__{tag}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(target, np.round(window * 255).astype(np.uint8))
            counts[class_name] = counts.get(class_name, 0) + 1
    print(counts)


if __name__ == "__main__":
    main()
