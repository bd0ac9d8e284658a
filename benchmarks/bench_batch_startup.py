"""Batch start-up: seconds until the first unit of an archive of stacks is done.

An archive of ``--stacks`` synthetic 2-channel uint16 TIFF stacks (``--frames`` frames of
``--side`` px, written to ``--workdir``) is analysed in this process, segmentation only,
one frame per unit; the run is stopped once its first unit is done. Inputs are opened as
the run reaches them (see :mod:`napari_bloodcell.batch`), so this time should not grow
with the number of stacks; the time to open them all is measured too, for scale.

Writes ``benchmarks/results/batch_startup.json``; ~1 minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import write_result
from bench_scaling import write_stack

from napari_bloodcell.batch import analyze_files
from napari_bloodcell.pipeline import AnalysisSettings
from napari_bloodcell.reading import open_lazy


class FirstUnitDone(Exception):
    """Raised from the progress callback to stop the run after its first unit."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, nargs="+", default=[30, 300])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bloodcell-startup-", dir=args.workdir))
    try:
        stack = write_stack(workdir / "stack.tif", args.frames, args.side)
        runs = [first_unit_run(workdir, stack, n) for n in args.stacks]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"frames_per_stack": args.frames, "side_px": args.side, "runs": runs}
    write_result("batch_startup", result)
    print(json.dumps(result, indent=2))


def first_unit_run(workdir: Path, stack: Path, n_stacks: int) -> dict:
    """Seconds to the first unit's end for ``n_stacks`` copies of ``stack``, and to open
    them all (:func:`~napari_bloodcell.reading.open_lazy`)."""
    inputs = []
    for i in range(n_stacks):
        inputs.append(workdir / f"archive{n_stacks}" / f"stack{i:05d}.tif")
        inputs[-1].parent.mkdir(exist_ok=True)
        shutil.copyfile(stack, inputs[-1])
    started = time.perf_counter()
    for path in inputs:
        open_lazy(path)
    opening_all = time.perf_counter() - started

    def stop(_progress) -> None:
        raise FirstUnitDone

    started = time.perf_counter()
    try:
        analyze_files(inputs, workdir / f"out{n_stacks}", AnalysisSettings(), model=None,
                      frames_per_unit=1, on_progress=stop)  # fmt: skip
    except FirstUnitDone:
        first_unit = time.perf_counter() - started
    else:
        raise RuntimeError("the run finished without calling its progress callback")
    print(
        f"{n_stacks} stacks: first unit after {first_unit:.2f} s (all opened: {opening_all:.2f} s)"
    )
    return {
        "stacks": n_stacks,
        "seconds_to_first_unit": round(first_unit, 3),
        "seconds_to_open_all": round(opening_all, 3),
    }


if __name__ == "__main__":
    main()
