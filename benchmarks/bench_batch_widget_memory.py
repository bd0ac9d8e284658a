"""Memory of the napari Batch widget on a long dask-backed stack (issue 7).

A ``--frames``-long ``--side``² RGB fluorescence stack is made lazily by dask (16
synthetic frames cycled: the stack itself costs no memory), added to a napari viewer as
an image layer and analysed by the *Batch time-lapse* widget, segmentation only
(leukocytes in channel 1, platelets in channel 0; no TensorFlow in this process). A
thread samples this process's RSS every 0.1 s; the peak so far is recorded when 10 %,
25 %, 50 % and 100 % of the frames are done. For comparison, ``label_arrays_mb`` is what
(T, Y, X) uint32 + uint8 label arrays of the whole stack would take.

Needs a display (napari makes a Qt window, not shown)::

    xvfb-run -a python benchmarks/bench_batch_widget_memory.py            # ~3 min
    xvfb-run -a python benchmarks/bench_batch_widget_memory.py --frames 200 --side 256

Writes ``benchmarks/results/batch_widget_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import dask.array as da
import numpy as np
import psutil
from _common import write_result
from bench_scaling import PeakRss

from napari_bloodcell.synthetic import make_timelapse

BASE_FRAMES = 16
CHECKPOINTS = (0.1, 0.25, 0.5, 1.0)


def lazy_stack(n_frames: int, side: int) -> da.Array:
    """(T, Y, X, 3) float32 stack computed one frame per chunk from cycled synthetic frames."""
    base = make_timelapse(n_frames=BASE_FRAMES, shape=(side, side), seed=0).image
    base = base.astype(np.float32)

    def frame(block_id):
        return base[block_id[0] % BASE_FRAMES][None]

    return da.map_blocks(
        frame,
        chunks=((1,) * n_frames, (side,), (side,), (base.shape[-1],)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_bloodcell._napari._batch import BatchWidget

    viewer = napari.Viewer(show=False)
    viewer.add_image(lazy_stack(args.frames, args.side), rgb=True, name="movie")
    widget = BatchWidget(viewer)
    widget.model.value = None
    widget.modality.value = "fluorescence"
    widget.leukocyte_channel.value, widget.platelet_channel.value = 1, 0

    baseline_mb = psutil.Process().memory_info().rss / 2**20
    peak = PeakRss(os.getpid())
    checkpoints = {round(args.frames * fraction): fraction for fraction in CHECKPOINTS}
    samples = []

    def record(item) -> None:
        if item.frames_done in checkpoints:
            samples.append({"frames_done": item.frames_done, "peak_rss_mb": round(peak.mb)})
            print(samples[-1], flush=True)

    started = time.perf_counter()
    widget.run()
    widget.worker.yielded.connect(record)
    app = QApplication.instance()
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.005)
    seconds = time.perf_counter() - started
    peak.stop()
    instances = viewer.layers["movie stack instances"]
    cells = viewer.layers["movie stack cells"]
    result = {
        "frames": args.frames,
        "frame_shape": [args.side, args.side, 3],
        "status": widget.status.value,
        "seconds": round(seconds, 1),
        "ms_per_frame": round(1000 * seconds / args.frames, 1),
        "cells": len(cells.features),
        "labels_layer_shape": list(instances.data.shape),
        "rss_before_mb": round(baseline_mb),
        "peak_rss": samples,
        "label_arrays_mb": round(args.frames * args.side**2 * 5 / 2**20),
        "compressed_labels_mb": round(
            (
                instances.data.nbytes_compressed
                + viewer.layers["movie stack classes"].data.nbytes_compressed
            )
            / 2**20,
            1,
        ),
    }
    write_result("batch_widget_memory", result)
    print(json.dumps(result, indent=2))
    viewer.close()


if __name__ == "__main__":
    main()
