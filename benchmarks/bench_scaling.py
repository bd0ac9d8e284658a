"""Scaling: memory on long stacks, speed-up with Dask workers, cost per frame size.

Three measurements, all on synthetic fluorescence data generated here (nothing from
the shared data), segmentation only (``--no-classify``: fluorescence classes come from
the channel mapping, not the CNN):

1. **Memory**: peak RSS of the whole process tree (CLI + Dask scheduler + workers,
   sampled with psutil every 0.1 s) analysing one 512×512, 2-channel uint16 stack of
   each length in ``--frames``, written page by page to ``--workdir``.
2. **Speed-up**: a batch of ``--batch-stacks`` stacks analysed with ``--workers 1`` and
   ``--workers 2`` (analysis seconds from run.json, cluster start excluded); the two
   tables must be identical.
3. **Frame size**: ms per frame of :func:`~napari_bloodcell.pipeline.analyze_frame` in
   this process for each side in ``--sides``.

Writes ``benchmarks/results/scaling.json``. Defaults take ~10-12 minutes on 2 free
cores; ``--frames 100 200 400 --batch-frames 12`` for a quick run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import tifffile
from _common import write_result

from napari_bloodcell.pipeline import AnalysisSettings, analyze_frame
from napari_bloodcell.reading import image_from_array
from napari_bloodcell.synthetic import make_timelapse

CHANNEL_ARGS = ["--channel", "leukocyte=1", "--channel", "platelet=0"]
BASE_FRAMES = 16  # distinct synthetic frames cycled through a long stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--side", type=int, default=512, help="frame side for memory runs")
    parser.add_argument("--memory-workers", type=int, default=2, help="0: in-process")
    parser.add_argument("--batch-stacks", type=int, default=4)
    parser.add_argument("--batch-frames", type=int, default=24)
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bloodcell-scaling-", dir=args.workdir))
    try:
        result = {
            "segmentation_only": True,
            "memory": [memory_run(workdir, n, args.side, args.memory_workers) for n in args.frames],
            "speedup": speedup_run(workdir, args.batch_stacks, args.batch_frames, args.side),
            "frame_size": [frame_size_run(side) for side in args.sides],
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_result("scaling", result)
    print(json.dumps(result, indent=2))


def write_stack(path: Path, n_frames: int, side: int, seed: int = 0) -> Path:
    """A (T, Y, X, 2) uint16 fluorescence stack written one page at a time."""
    movie = make_timelapse(n_frames=BASE_FRAMES, shape=(side, side), seed=seed).image
    base = movie[..., :2].astype(np.uint16) * 16 + 200  # 12-bit-like camera values
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for t in range(n_frames):
            writer.write(
                base[t % BASE_FRAMES],
                photometric="minisblack",
                planarconfig="contig",  # one page of 2 samples per pixel per frame
                contiguous=True,
                metadata={"axes": "TYXS"},
            )
    return path


def analyze(inputs: list[Path], out: Path, workers: int) -> tuple[float, float, dict]:
    """Run the CLI; returns (wall seconds, peak RSS of its process tree in MB, run.json)."""
    command = [sys.executable, "-m", "napari_bloodcell.cli", "analyze", *map(str, inputs)]
    command += ["--out", str(out), "--no-classify", "--max-overlays", "1", *CHANNEL_ARGS]
    if workers:
        command += ["--workers", str(workers)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = PeakRss(process.pid)
    _, err = process.communicate()
    peak.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{err.decode()[-2000:]}")
    return time.perf_counter() - started, peak.mb, json.loads((out / "run.json").read_text())


class PeakRss:
    """Samples the summed RSS of a process and its descendants in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        self._root, self._interval, self.mb = psutil.Process(pid), interval_s, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                processes = [self._root, *self._root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in processes if p.is_running())
            except psutil.Error:
                total = 0
            self.mb = max(self.mb, total / 2**20)
            self._done.wait(self._interval)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def memory_run(workdir: Path, n_frames: int, side: int, workers: int) -> dict:
    stack = write_stack(workdir / f"stack_{n_frames}.tif", n_frames, side)
    wall, peak_mb, run = analyze([stack], workdir / f"out_{n_frames}", workers)
    stack.unlink()
    record = {
        "frames": n_frames,
        "frame_shape": [side, side, 2],
        "stack_mb_on_disk": round(n_frames * side * side * 2 * 2 / 2**20),
        "workers": workers,
        "peak_rss_mb": round(peak_mb),
        "wall_s": round(wall, 1),
        "ms_per_frame": round(1000 * run["seconds_per_frame"], 1),
    }
    print(record, flush=True)
    return record


def speedup_run(workdir: Path, n_stacks: int, n_frames: int, side: int) -> dict:
    stacks = [
        write_stack(workdir / f"batch_{i}.tif", n_frames, side, seed=i) for i in range(n_stacks)
    ]
    seconds, tables = {}, {}
    for workers in (1, 2):
        out = workdir / f"batch_out_{workers}"
        _, _, run = analyze(stacks, out, workers)
        seconds[workers] = run["seconds"]
        tables[workers] = (
            pd.read_csv(out / "cells.csv")
            .sort_values(["source", "frame", "label"])
            .reset_index(drop=True)
        )
    record = {
        "stacks": n_stacks,
        "frames_per_stack": n_frames,
        "frame_shape": [side, side, 2],
        "seconds_1_worker": seconds[1],
        "seconds_2_workers": seconds[2],
        "speedup": round(seconds[1] / seconds[2], 2),
        "identical_tables": bool(tables[1].equals(tables[2])),
        "rows": len(tables[1]),
    }
    print(record, flush=True)
    return record


def frame_size_run(side: int, n_frames: int = 6) -> dict:
    movie = make_timelapse(n_frames=n_frames, shape=(side, side), seed=1).image
    frames = image_from_array(movie, axes="TYXC").data
    settings = AnalysisSettings(channels={"leukocyte": 1, "platelet": 0})
    analyze_frame(frames[0], None, settings)  # warm-up
    seconds = [analyze_frame(frame, None, settings).seconds for frame in frames]
    record = {
        "side": side,
        "frames": n_frames,
        "ms_per_frame_median": round(1000 * float(np.median(seconds)), 1),
        "ms_per_megapixel": round(1000 * float(np.median(seconds)) / (side * side / 1e6), 1),
    }
    print(record, flush=True)
    return record


if __name__ == "__main__":
    main()
