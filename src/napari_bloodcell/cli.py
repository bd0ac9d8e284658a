"""Command line: ``napari-bloodcell analyze | track | train | evaluate | calibrate | predict
| models | demo``.

Every user error (bad file, bad option, existing results, incompatible model)
prints one line ``napari-bloodcell: error: …`` naming the file and the problem
and exits with status 2. Ctrl-C (SIGINT) and SIGTERM both stop cleanly — work in
progress removed, finished results kept — with status 130 and 143.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PureWindowsPath

from .classification.model_files import TEST_TIME_VIEWS
from .errors import BloodcellError, OutputExistsError

EXIT_USER_ERROR = 2
FRAMES_PER_UNIT = 8  # the default of napari_bloodcell.batch, without importing it here
SCHEDULER_FROM_DASK_CONFIG = (
    "$DASK_SCHEDULER_ADDRESS (Dask's scheduler-address setting; unset it to analyse "
    "without a cluster)"
)
"""Where ``analyze`` takes a scheduler address from without --workers or --scheduler."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C (SIGINT)."""

    signum = signal.SIGTERM


def _raise_terminated(_signum, _frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _interrupts_not_lost() -> Iterator[None]:
    """Deliver again an interrupt that Python had to ignore.

    Ctrl-C raised inside a callback whose exceptions Python cannot pass on (a gc callback,
    a ``__del__``: Dask's scheduler, which runs in this process for a local cluster, times
    every collection) was printed as "Exception ignored in …" and lost: the run went on to
    its end and exited 0. Such an interrupt is kept and its signal sent again
    :data:`REDELIVERY_DELAY_S` later from another thread (the main thread has left the
    callback by then); one still kept when the block ends is raised there, never after it.
    """
    passed_on = sys.unraisablehook
    lost: list[int] = []
    lock = threading.Lock()
    closed = False

    def send_again() -> None:
        with lock:  # (the signal is raised before the lock is released: none after the block)
            if lost and not closed:
                to_main_thread(lost.pop())

    def keep_interrupts(unraisable) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            passed_on(unraisable)
            return
        with lock:
            lost.append(getattr(unraisable.exc_value, "signum", signal.SIGINT))
        timer = threading.Timer(REDELIVERY_DELAY_S, send_again)
        timer.daemon = True
        timer.start()

    sys.unraisablehook = keep_interrupts
    try:
        yield
    finally:
        try:
            with lock:  # a signal sent again before this is acted on here, at the latest
                closed = True
                kept = lost[:1]
            if kept:
                raise Terminated() if kept[0] == signal.SIGTERM else KeyboardInterrupt()
        finally:
            sys.unraisablehook = passed_on


REDELIVERY_DELAY_S = 0.05
"""How long after an interrupt was lost in a callback it is sent again."""


def to_main_thread(signum: int) -> None:
    """Send signal ``signum`` to the main thread, so that a call blocking it (a sleep, a wait
    for the cluster) is interrupted as by Ctrl-C; raised in this thread where there are no
    thread signals (Windows)."""
    if hasattr(signal, "pthread_kill"):
        signal.pthread_kill(threading.main_thread().ident, signum)
    else:
        signal.raise_signal(signum)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``minimum``."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return whole_number


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        with _interrupts_not_lost():
            return args.run(args)
    except BloodcellError as exc:
        print(f"napari-bloodcell: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # the system's refusal (disk full, read-only, no permission …)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"napari-bloodcell: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"napari-bloodcell: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


MODEL_HELP = "'default' (the packaged model), a user model's name or a .keras file"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-bloodcell",
        description="Segment, classify and count blood cells in smears and time-lapses.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    analyze = commands.add_parser("analyze", help="segment and classify cells in image files")
    analyze.add_argument("inputs", nargs="+", type=Path, help="JPEG/PNG/TIFF frames or stacks")
    analyze.add_argument("--out", type=Path, required=True, help="output folder")
    analyze.add_argument(
        "--modality",
        choices=["auto", "smear", "fluorescence"],
        default="auto",
        help="smear: Giemsa/Wright RGB; fluorescence: one channel per cell type (see "
        "--channel); auto (default): a bright background is a smear",
    )
    analyze.add_argument("--model", default="default", help=MODEL_HELP)
    analyze.add_argument("--no-classify", action="store_true", help="segment only, no CNN")
    analyze.add_argument("--pixel-size", type=float, metavar="UM", help="µm per pixel")
    analyze.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="ROLE=INDEX",
        help="fluorescence channel of a cell type, e.g. --channel neutrophil=1 --channel "
        "platelet=0: a role named platelet (or platelets, thrombocyte(s), plt) is segmented "
        "as platelets, any other name as leukocytes and becomes their cell_class",
    )
    analyze.add_argument(
        "--axes", help="axis order of the inputs when it cannot be inferred, e.g. TYXC"
    )
    add_uncertain_threshold(analyze)
    analyze.add_argument(
        "--max-overlays",
        type=at_least(0),
        default=10,
        metavar="N",
        help="overlay PNGs per input: a stack's first N frames, a single frame's one if "
        "N > 0 (default 10; 0: none)",
    )
    analyze.add_argument(
        "--overwrite",
        action="store_true",
        help="analyse inputs again whose results are in --out (default: skip them)",
    )
    cluster = analyze.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers",
        type=at_least(1),
        metavar="N",
        help="analyse on a local Dask cluster of N worker processes (one thread each)",
    )
    cluster.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="analyse on an existing Dask cluster, e.g. tcp://host:8786 "
        "(default: $DASK_SCHEDULER_ADDRESS when set)",
    )
    analyze.add_argument(
        "--frames-per-task",
        type=at_least(1),
        default=FRAMES_PER_UNIT,
        metavar="N",
        help=f"frames per unit of work (default {FRAMES_PER_UNIT}); memory grows with it",
    )
    analyze.add_argument(
        "--track", action="store_true", help="also link cells over frames into tracks (tracking/)"
    )
    analyze.add_argument(
        "--frame-interval",
        type=float,
        metavar="S",
        help="seconds between frames (tracking); default: as an OME or ImageJ TIFF records it",
    )
    add_speed_options(analyze)
    analyze.set_defaults(run=_run_analyze)

    track = commands.add_parser("track", help="link the cells of an analyze table into tracks")
    track.add_argument("cells", type=Path, help="cells table from 'analyze' (.csv or .parquet)")
    track.add_argument("--out", type=Path, required=True, help="output folder")
    track.add_argument(
        "--pixel-size",
        type=float,
        metavar="UM",
        help="µm per pixel (default: the one the table was measured with, if any)",
    )
    track.add_argument(
        "--frame-interval",
        type=float,
        metavar="S",
        help="seconds between frames; default: as the analyze run's run.json beside the table "
        "records each input's (from OME or ImageJ TIFFs)",
    )
    add_speed_options(track)
    track.add_argument("--overwrite", action="store_true", help="replace existing results")
    track.set_defaults(run=_run_track)

    train = commands.add_parser("train", help="train a crop classifier from class folders")
    train.add_argument(
        "data_dirs", nargs="+", type=Path, help="folders with one sub-folder per class"
    )
    target = train.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="model file to write (.keras)")
    target.add_argument(
        "--name", help="save as a user model of this name (listed by 'napari-bloodcell models')"
    )
    train.add_argument(
        "--init",
        metavar="MODEL",
        help="fine-tune from this model ('default', a user model or a path): body kept, "
        "head rebuilt for new classes",
    )
    train.add_argument(
        "--head-only",
        action="store_true",
        help="with --init: train the head only, the body frozen (measured worse than "
        "fine-tuning it all with ~50 crops per class; see docs/benchmarks.md)",
    )
    train.add_argument(
        "--arch", choices=["compact", "coursework"], help="network (default compact)"
    )
    train.add_argument(
        "--input-size", type=int, help="crop side in pixels (default per architecture)"
    )
    train.add_argument("--epochs", type=int, help="default 30; 60 with --init")
    train.add_argument("--batch-size", type=int, help="default 32; 16 with --init")
    train.add_argument("--learning-rate", type=float, help="default 1e-3")
    train.add_argument(
        "--patience", type=int, help="early-stopping patience (default 5; 10 with --init)"
    )
    train.add_argument(
        "--lr-patience",
        type=int,
        help="epochs without progress before the learning rate is cut ×0.3 (default 0: never)",
    )
    train.add_argument("--seed", type=int, help="split and initialisation seed (default 0)")
    train.add_argument(
        "--normalization",
        choices=["batch", "group"],
        help="BatchNorm (default) or GroupNorm layers (measured no better on other microscopes)",
    )
    train.add_argument(
        "--stain-jitter",
        type=float,
        help="per-channel gain jitter, e.g. 0.1 (default 0; 0.15 with --init)",
    )
    train.add_argument(
        "--blur-sigma", type=float, help="max Gaussian blur sigma (px), e.g. 1.0 (default 0)"
    )
    train.add_argument(
        "--hue-jitter", type=float, help="max hue shift per crop (0.5 = 180°; default 0.05)"
    )
    train.add_argument(
        "--lamp-jitter",
        type=float,
        help="simulated other lamp: per-channel over-exposure up to exp(x) and an "
        "illumination ramp, then the crop is re-normalised, e.g. 0.3 (default 0)",
    )
    train.add_argument(
        "--mixstyle",
        type=float,
        help="probability of MixStyle (feature-statistics mixing between crops) per batch "
        "after the first three stages, training from scratch only, e.g. 0.5 (default 0)",
    )
    train.add_argument(
        "--views",
        type=int,
        choices=TEST_TIME_VIEWS,
        help="rotated/flipped views averaged per crop when classifying (default 8; with "
        "--init the initial model's)",
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing model")
    train.set_defaults(run=_run_train)

    evaluate = commands.add_parser("evaluate", help="score a model on class folders")
    evaluate.add_argument(
        "data_dirs", nargs="+", type=Path, help="folders with one sub-folder per class"
    )
    evaluate.add_argument("--model", default="default", help=MODEL_HELP)
    evaluate.add_argument(
        "--out", type=Path, required=True, help="folder for metrics.json and plots"
    )
    evaluate.add_argument(
        "--ignore-unknown", action="store_true", help="skip class folders the model does not know"
    )
    evaluate.add_argument(
        "--all-images",
        action="store_true",
        help="also score the images of the model's training and validation split (by default "
        "a folder the model was trained on contributes its test split and images added "
        "since)",
    )
    add_uncertain_threshold(evaluate)
    evaluate.add_argument("--overwrite", action="store_true", help="replace an evaluation in OUT")
    evaluate.set_defaults(run=_run_evaluate)

    calibrate = commands.add_parser(
        "calibrate", help="fit a model's temperature on its recorded validation images"
    )
    calibrate.add_argument("model", type=Path, help="model file (.keras) to update in place")
    calibrate.add_argument("data_dirs", nargs="+", type=Path, help="the folders it was trained on")
    calibrate.add_argument(
        "--views",
        type=int,
        choices=TEST_TIME_VIEWS,
        help="first set the rotated/flipped views averaged per crop (8: most accurate, "
        "1: 8× faster)",
    )
    calibrate.set_defaults(run=_run_calibrate)

    predict = commands.add_parser("predict", help="classify single-cell crop images")
    predict.add_argument("inputs", nargs="+", type=Path, help="crop images or folders of them")
    predict.add_argument("--model", default="default", help=MODEL_HELP)
    predict.add_argument(
        "--out", type=Path, required=True, help="table to write (.csv or .parquet)"
    )
    add_uncertain_threshold(predict)
    predict.add_argument("--overwrite", action="store_true", help="replace an existing table")
    predict.set_defaults(run=_run_predict)

    models = commands.add_parser("models", help="list the models available by name")
    models.set_defaults(run=_run_models)

    demo = commands.add_parser("demo", help="run the pipeline on generated data with known answers")
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("bloodcell-demo"),
        help="output folder (default %(default)s)",
    )
    demo.add_argument(
        "--seed", type=at_least(0), default=0, help="seed of the generated data (default 0)"
    )
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="write into OUT although it holds an earlier demo or other files (replaced)",
    )
    demo.set_defaults(run=_run_demo)
    return parser


def parse_channels(specs: list[str]) -> dict[str, int] | None:
    """``["neutrophil=1", "platelet=0"]`` → ``{"neutrophil": 1, "platelet": 0}``; a role
    given twice (in any case) is refused."""
    if not specs:
        return None
    channels: dict[str, int] = {}
    spec_of: dict[str, str] = {}
    for spec in specs:
        role, _, index = spec.partition("=")
        if not role.strip() or not index.strip().isdigit():
            raise BloodcellError(f"--channel {spec!r}: expected ROLE=INDEX, e.g. platelet=0")
        role = role.strip().lower()
        if role in channels:
            raise BloodcellError(
                f"--channel {spec_of[role]!r} and --channel {spec!r} give the role {role!r} "
                f"twice; give each role once"
            )
        channels[role], spec_of[role] = int(index), spec
    return channels


def add_speed_options(parser) -> None:
    """``--wbc-max-speed`` / ``--platelet-max-speed``: the reach of a link in tracking."""
    for cell, default in (
        ("wbc", "50 µm/min with both, else 1 median diameter/frame"),
        ("platelet", "5 µm/min with both, else 0.5 median diameter/frame"),
    ):
        parser.add_argument(
            f"--{cell}-max-speed",
            type=float,
            metavar="V",
            help=f"largest speed of a {cell} link (tracking), in µm/min with a pixel size and "
            f"a frame interval (px instead of µm without the pixel size, per frame instead of "
            f"per minute without the interval; default {default}; raise it for flowing cells)",
        )


def tracking_params(args):
    """The :class:`~napari_bloodcell.tracking.TrackingParams` of the speed options (checked
    by :func:`check_lengths_and_times` before any work)."""
    from .tracking import TrackingParams

    return TrackingParams(
        wbc_max_speed=args.wbc_max_speed, platelet_max_speed=args.platelet_max_speed
    )


def check_lengths_and_times(args, *, segmenting: bool) -> None:
    """Refuse a --pixel-size outside :data:`~.segmentation.PIXEL_SIZE_RANGE_UM` when frames
    are ``segmenting`` (else, as a --frame-interval or tracking speed, one that is not a
    positive number up to :data:`~.tracking.MAX_TIME_OR_SPEED`: larger ones overflowed in
    linking)."""
    from .segmentation import check_pixel_size
    from .tracking import MAX_TIME_OR_SPEED

    if segmenting:
        check_pixel_size(args.pixel_size, "--pixel-size")
    for option, value in (
        *([] if segmenting else [("--pixel-size", args.pixel_size)]),
        ("--frame-interval", args.frame_interval),
        ("--wbc-max-speed", args.wbc_max_speed),
        ("--platelet-max-speed", args.platelet_max_speed),
    ):
        if value is not None and not (math.isfinite(value) and 0 < value <= MAX_TIME_OR_SPEED):
            raise BloodcellError(
                f"{option} must be a positive number up to {MAX_TIME_OR_SPEED:g}, got {value}"
            )


def add_uncertain_threshold(command) -> None:
    """The ``--uncertain-threshold`` option of the commands that classify."""
    command.add_argument(
        "--uncertain-threshold",
        type=float,
        metavar="P",
        help="confidence below which a cell is 'uncertain' (default: the model's)",
    )


def checked_uncertain_threshold(args) -> float | None:
    """``--uncertain-threshold``, refused outside [0, 1] (before any work)."""
    if args.uncertain_threshold is not None and not 0 <= args.uncertain_threshold <= 1:
        raise BloodcellError(
            f"--uncertain-threshold is a probability in [0, 1], got {args.uncertain_threshold}"
        )
    return args.uncertain_threshold


def _run_analyze(args) -> int:
    from .pipeline import AnalysisSettings

    check_lengths_and_times(args, segmenting=True)  # before hours of analysis
    checked_uncertain_threshold(args)
    settings = AnalysisSettings(
        modality=args.modality,
        channels=parse_channels(args.channel),
        pixel_size_um=args.pixel_size,
        uncertain_threshold=args.uncertain_threshold,
    )
    check_not_folders(args.inputs)
    tracking_only = [
        option
        for option, value in (
            ("--frame-interval", args.frame_interval),
            ("--wbc-max-speed", args.wbc_max_speed),
            ("--platelet-max-speed", args.platelet_max_speed),
        )
        if value is not None
    ]
    if tracking_only and not args.track:
        print(
            f"napari-bloodcell: warning: {', '.join(tracking_only)}: used by --track only; ignored",
            file=sys.stderr,
        )
    from .batch import check_inputs

    check_inputs(args.inputs, Path(args.out).absolute())  # before a cluster is started
    scheduler, scheduler_origin = args.scheduler, ""
    if scheduler is None and args.workers is None:
        import dask

        # an empty value (DASK_SCHEDULER_ADDRESS="", a common way to unset it) is none
        scheduler = dask.config.get("scheduler-address", None) or None
        scheduler_origin = SCHEDULER_FROM_DASK_CONFIG
    if scheduler is None and args.workers is None:
        return _analyze_and_report(args, settings, client=None)
    from .distributed import dashboard_link, describe, open_client

    with open_client(args.workers, scheduler, scheduler_origin=scheduler_origin) as client:
        print(describe(client), file=sys.stderr)
        if scheduler_origin:
            print(f"(scheduler address from {scheduler_origin})", file=sys.stderr)
        print(f"Dask dashboard: {dashboard_link(client)}", file=sys.stderr)
        return _analyze_and_report(args, settings, client)


def check_not_folders(inputs: list[Path]) -> None:
    """Refuse a folder among the inputs (a Zarr store, a folder, is an image)."""
    from .reading import ZARR_SUFFIX

    for path in inputs:
        if path.is_dir() and path.suffix.lower() != ZARR_SUFFIX:
            raise BloodcellError(f"{path} is a folder; give its images (e.g. {path / '*.tif'})")


def _analyze_and_report(args, settings, client) -> int:
    """Run :func:`~napari_bloodcell.batch.analyze_files` and print its summary."""
    from .batch import analyze_files
    from .table import summarise

    progress = TerminalProgress(sys.stderr)
    try:
        summary = analyze_files(
            args.inputs,
            args.out,
            settings,
            model=None if args.no_classify else args.model,
            axes=args.axes,
            overwrite=args.overwrite,
            max_overlays=args.max_overlays,
            frames_per_unit=args.frames_per_task,
            client=client,
            on_progress=progress,
        )
    finally:
        progress.finish()
    for path, message in {**summary.skipped, **summary.parts}.items():
        print(f"napari-bloodcell: {path}: {message}", file=sys.stderr)
    for path, message in summary.failures.items():
        print(
            f"napari-bloodcell: error: {message if path in message else f'{path}: {message}'}",
            file=sys.stderr,
        )
    if summary.processed:
        from .classification.novelty import white_cell_novelty

        analysed = summary.table[
            summary.table["source"].isin([Path(p).name for p in summary.processed])
        ]
        print(
            f"\n{len(summary.processed)} input(s), {summary.n_frames} frame(s), "
            f"{len(analysed)} cells, {1000 * summary.seconds_per_frame:.0f} ms/frame "
            f"({', '.join(sorted(set(summary.modalities.values())))})"
        )
        print(summarise(analysed).to_string(index=False) if len(analysed) else "no cells found")
        skipped = len(summary.table) - len(analysed)
        if skipped:
            print(f"(and {skipped} cells of inputs finished before, in cells.csv)")
        print(f"results in {summary.out}/")
        _warn_if_novel(white_cell_novelty(analysed), "these images", "white cells")
    elif summary.skipped and not summary.failures:
        rebuilt = summary.out / "cells.csv" in summary.written
        print(
            f"nothing to do: every input is finished in {summary.out}/"
            + ("; cells.csv rebuilt from their tables" if rebuilt else "")
        )
    smears = [p for p in summary.processed if "smear" in summary.modalities.get(p, "")]
    if settings.channels and smears:
        print(
            f"napari-bloodcell: warning: --channel was ignored for {len(smears)} input(s) "
            f"analysed as smears (e.g. {Path(smears[0]).name}); --modality fluorescence "
            f"analyses them by channel",
            file=sys.stderr,
        )
    if args.track and not len(summary.table):
        print("napari-bloodcell: --track: no cells to track", file=sys.stderr)
    if args.track and len(summary.table):
        _track_each_source(
            summary.table,
            summary.out / "tracking",
            settings.pixel_size_um,
            args.frame_interval,
            recorded_intervals=summary.frame_intervals_s,
            overwrite=args.overwrite,
            skip_existing=True,
            folder_per_source=True,  # one layout whatever the number of inputs finished
            params=tracking_params(args),
        )
    return EXIT_USER_ERROR if summary.failures else 0


class TerminalProgress:
    """A one-line progress bar on a terminal (nothing when the stream is not a terminal)."""

    WIDTH = 30

    def __init__(self, stream):
        self._stream = stream
        self._started = time.perf_counter()
        self._drawn = False  # a bar is on the line, not yet ended

    def __call__(self, progress) -> None:
        if not self._stream.isatty() or progress.total_frames == 0:
            return
        filled = int(self.WIDTH * progress.fraction)
        rate = progress.total_done / max(time.perf_counter() - self._started, 1e-9)
        inputs = (
            f" · inputs opened {progress.inputs_opened}/{progress.inputs_to_open}"
            if progress.inputs_opened < progress.inputs_to_open
            else ""
        )
        line = (
            f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {progress.total_done}/"
            f"{progress.total_frames} frames{inputs}, {rate:.1f}/s · "
            f"{Path(progress.source).name} {progress.frames_done}/{progress.n_frames}"
        )
        self._drawn = progress.fraction < 1
        print(line, end="" if self._drawn else "\n", file=self._stream, flush=True)

    def finish(self) -> None:
        """End a bar left unfinished (an input failed partway, Ctrl-C) before other output."""
        if self._drawn:
            print(file=self._stream, flush=True)
            self._drawn = False


def _run_train(args) -> int:
    from .classification.model_files import (
        check_model_file_name,
        check_model_name,
        check_not_packaged,
        install_model,
    )
    from .classification.training import (
        TrainingConfig,
        describe,
        fine_tuning_config,
        train_classifier,
    )

    out = check_model_name(args.name, overwrite=args.overwrite) if args.name else args.out
    check_model_file_name(out)  # before "exists": a folder is no model file to overwrite
    check_not_packaged(out)
    if out.exists() and not args.overwrite:
        raise BloodcellError(f"{out} exists; pass --overwrite to replace it")
    if args.head_only and not args.init:
        raise BloodcellError("--head-only needs --init MODEL (the body to keep)")
    network_options = {"--arch": args.arch, "--normalization": args.normalization}
    if args.init and any(value is not None for value in network_options.values()):
        raise BloodcellError(
            f"{', '.join(k for k, v in network_options.items() if v is not None)}: a "
            f"fine-tuned network keeps the --init model's; leave them out with --init"
        )
    given = {
        field: value
        for field, value in {
            "input_size": args.input_size,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "patience": args.patience,
            "lr_patience": args.lr_patience,
            "seed": args.seed,
            "normalization": args.normalization,
            "stain_jitter": args.stain_jitter,
            "max_blur_sigma": args.blur_sigma,
            "hue_jitter": args.hue_jitter,
            "lamp_jitter": args.lamp_jitter,
            "mixstyle": args.mixstyle,
            "test_time_views": args.views,
        }.items()
        if value is not None
    }
    if args.init:
        config = fine_tuning_config(args.init, train_body=not args.head_only, **given)
    else:
        config = TrainingConfig(architecture=args.arch or "compact", **given)
    # trained in a work folder beside the target and moved there at the end: a model saved
    # under the same name meanwhile is kept (this one becomes <name>-2) unless --overwrite
    out.parent.mkdir(parents=True, exist_ok=True)  # (after every check: a refusal makes none)
    workdir = Path(tempfile.mkdtemp(prefix=".training-", dir=out.parent))
    try:
        result = train_classifier(args.data_dirs, workdir / out.name, config)
        placed = install_model(result.model_path, out, overwrite=args.overwrite)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(describe(dataclasses.replace(result, model_path=placed)))
    return 0


def _run_models(args) -> int:
    from .classification.model_files import list_models, read_metadata

    unreadable = 0
    for name, path in list_models().items():
        try:
            metadata = read_metadata(path)
        except BloodcellError as exc:  # one broken file must not hide the others
            print(f"{name:20s} unreadable: {exc}")
            unreadable += 1
            continue
        print(f"{name:20s} v{metadata.version:4s} {', '.join(metadata.classes)}  ({path})")
    return EXIT_USER_ERROR if unreadable else 0


def _run_track(args) -> int:
    from .table import read_table

    check_lengths_and_times(args, segmenting=False)
    params = tracking_params(args)
    if not args.cells.is_file():
        raise BloodcellError(f"{args.cells}: no such file")
    _track_each_source(
        read_table(args.cells),
        args.out,
        args.pixel_size,
        args.frame_interval,
        recorded_intervals=_recorded_frame_intervals(args.cells),
        overwrite=args.overwrite,
        skip_existing=False,
        params=params,
    )
    return 0


def _track_each_source(
    table,
    out: Path,
    pixel_size_um,
    frame_interval_s,
    *,
    recorded_intervals: dict | None = None,
    overwrite: bool,
    skip_existing: bool,
    folder_per_source: bool = False,
    params=None,
) -> None:
    """Track every time-lapse (``source``) of a cells table; each into ``out/<stem>/``
    (``folder_per_source``, or when there are several), else into ``out``.

    Without ``pixel_size_um`` each source is tracked in the µm its table was measured in,
    if any; without ``frame_interval_s`` at the interval its file recorded
    (``recorded_intervals``: input path → seconds; a table names its sources by file
    name), if any, else in frames (with a note).
    Existing tracking tables are replaced only with ``overwrite``; otherwise their sources
    are skipped with a note (``skip_existing``) or, before anything is tracked, refused
    (:class:`OutputExistsError`)."""
    import pandas as pd

    from .tracking import existing_tracking_files, pixel_size_of_table, track_table

    sources = table["source"].unique() if "source" in table and len(table) else [None]
    recorded = {_file_name(path): s for path, s in (recorded_intervals or {}).items()}
    targets = {
        source: out
        if len(sources) == 1 and not folder_per_source
        else out / (Path(str(source)).stem or "unnamed")
        for source in sources
    }
    if len(set(targets.values())) < len(targets):
        raise BloodcellError(
            f"sources {', '.join(map(str, sources))} would share tracking folders in {out}; "
            "track them one at a time (a table per source) into different --out folders"
        )
    taken = [] if overwrite else [t for t in targets.values() if existing_tracking_files(t)]
    if taken and not skip_existing:
        raise OutputExistsError(
            f"tracking tables exist in {', '.join(map(str, taken))}; "
            "pass --overwrite to replace them"
        )
    run_cells = out.parent / "cells.csv"  # (only analyze keeps tables: out is <run>/tracking)
    for source, target in targets.items():
        if target in taken:
            print(
                f"{target}: tracking tables exist, not replaced (to track again without "
                f"analysing again: napari-bloodcell track {shlex.quote(str(run_cells))} --out "
                f"{shlex.quote(str(target if len(sources) == 1 else out))} --overwrite, with "
                f"the tracking options of this run)"
            )
            continue
        if len(sources) == 1:
            cells = table
        else:  # a source may be missing (NaN) in a table made elsewhere
            cells = table[table["source"].isna() if pd.isna(source) else table["source"] == source]
        if source is not None:
            print(f"{source}:")
        pixel_size = pixel_size_um if pixel_size_um is not None else pixel_size_of_table(cells)
        interval = frame_interval_s
        if interval is None:
            interval = recorded.get(_file_name(str(source)))
        result = track_table(cells, pixel_size, interval, params)
        if interval is None and result.tracks["frame"].nunique() > 1:
            print(
                "  no frame interval (--frame-interval not given, none recorded in the file "
                "in a unit known here): times and speeds are per frame"
            )
        _report_tracking(result, target, overwrite=overwrite)


def _file_name(path: str) -> str:
    """The file name of ``path``, written on this system or on Windows (a run.json made there
    names its inputs with backslashes)."""
    return PureWindowsPath(path).name if "\\" in path else Path(path).name


def _recorded_frame_intervals(cells_path: Path) -> dict:
    """Input path → seconds between frames, as recorded with the results of the analyze
    runs whose ``cells.csv`` (or ``.parquet``) ``cells_path`` is: each input's record
    (``tables/<stem>.input.json``, whichever run analysed it), else the last run's
    ``run.json`` (results of older versions); empty for other tables."""
    from .batch import read_input_record

    intervals = {}
    try:
        recorded = json.loads((cells_path.parent / "run.json").read_text())["frame_intervals_s"]
        intervals.update(recorded if isinstance(recorded, dict) else {})
    except (OSError, ValueError, KeyError, TypeError):  # absent, unreadable, an older run
        pass
    for record_path in sorted((cells_path.parent / "tables").glob("*.input.json")):
        record = read_input_record(cells_path.parent, record_path.name.removesuffix(".input.json"))
        if record is not None and "frame_interval_s" in record:
            intervals[record["input"]] = record["frame_interval_s"]
    return intervals


def _report_tracking(result, out: Path, *, overwrite: bool) -> None:
    from .tracking import write_tracking

    write_tracking(result, out, overwrite=overwrite)
    if len(result.summary):
        counts = result.summary.groupby(["cell_type", "track_class"]).size().rename("tracks")
        print(counts.reset_index().to_string(index=False))
    print(
        f"{len(result.summary)} track(s), {len(result.interactions)} contact event(s); "
        f"tracking tables in {out}/"
    )


def _run_evaluate(args) -> int:
    from .classification.evaluation import (
        check_evaluation_folder,
        evaluate_classifier,
        write_evaluation,
    )

    check_evaluation_folder(args.out, overwrite=args.overwrite)  # before the evaluation runs
    metrics, _ = evaluate_classifier(
        args.data_dirs,
        args.model,
        ignore_unknown=args.ignore_unknown,
        uncertain_threshold=checked_uncertain_threshold(args),
        all_images=args.all_images,
    )
    written = write_evaluation(metrics, args.out, overwrite=args.overwrite)
    print(
        json.dumps({k: metrics[k] for k in ("n", "accuracy", "macro_f1", "split_parts")}, indent=2)
    )
    for folder, n_images in metrics["other_class_folders"].items():
        print(
            f"{folder}: left out, not a class of the model ({n_images} images; --ignore-unknown)",
            file=sys.stderr,
        )
    for folder, parts in metrics["left_out"].items():
        print(
            f"{folder}: left out {sum(parts.values())} images the model learnt from or may "
            f"have learnt from ({', '.join(f'{n} {part}' for part, n in parts.items())}); "
            f"--all-images "
            f"scores them too",
            file=sys.stderr,
        )
    learnt = sum(metrics["split_parts"].get(part, 0) for part in ("train", "validation"))
    if learnt:
        print(
            f"warning: {learnt} of the {metrics['n']} images scored were used to train or "
            f"calibrate the model; these figures overstate its accuracy",
            file=sys.stderr,
        )
    if metrics["other_named_as_learnt"]:
        print(
            f"warning: {metrics['other_named_as_learnt']} images scored as never seen have "
            f"the source name (the file name before '__') of an image the model was trained "
            f"or calibrated on; if they were cut from the same frames, these figures "
            f"overstate its accuracy",
            file=sys.stderr,
        )
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def _run_calibrate(args) -> int:
    from .classification.calibration import calibrate_model_file

    record = calibrate_model_file(args.model, args.data_dirs, views=args.views)
    print(json.dumps(record, indent=2))
    return 0


def _run_predict(args) -> int:
    from .classification.prediction import predict_files
    from .table import check_table_path, write_table

    if args.out.exists() and not args.overwrite:
        raise OutputExistsError(f"{args.out} exists; pass --overwrite to replace it")
    check_table_path(args.out)  # before the crops are classified
    table = predict_files(args.inputs, args.model, checked_uncertain_threshold(args))
    write_table(table, args.out)
    print(table["cell_class"].value_counts().to_string())
    print(f"wrote {args.out}")
    _warn_if_novel(table["novelty"], "these crops")
    return 0


def _warn_if_novel(novelty_values, what: str, cells: str = "classified cells") -> None:
    """Print :func:`~.classification.novelty.novelty_warning`'s warning, if any."""
    from .classification.novelty import novelty_warning

    message = novelty_warning(novelty_values, cells)
    if message:
        print(f"napari-bloodcell: warning: {what}: {message}", file=sys.stderr)


def _run_demo(args) -> int:
    from .demo import run_demo

    report = run_demo(args.out, seed=args.seed, overwrite=args.overwrite)
    print(report)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
