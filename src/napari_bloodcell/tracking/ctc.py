"""Cell Tracking Challenge (CTC) format: label stacks + ``L B E P`` track files, and scores.

In CTC files a track is a run of consecutive frames; a track interrupted by missed frames
continues as a new label whose parent ``P`` is the interrupted one (no divisions here).
``ctc_scores`` computes DET and TRA with the ``py-ctcmetrics`` package (AOGM-based, as in the
challenge's own evaluation software).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from ..errors import OutputExistsError, TrackingError

LBEP_COLUMNS = ["L", "B", "E", "P"]


def ctc_segments(tracks: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """CTC label of each row of ``tracks`` (``track_id``, ``frame``) and the ``L B E P`` table.

    Tracks are split at gaps; the piece after a gap has the piece before it as parent.
    """
    if tracks.empty:
        return np.zeros(0, dtype=np.int64), pd.DataFrame(columns=LBEP_COLUMNS, dtype=np.int64)
    order = np.lexsort((tracks["frame"].to_numpy(), tracks["track_id"].to_numpy()))
    track_id = tracks["track_id"].to_numpy()[order]
    frame = tracks["frame"].to_numpy()[order]
    new_track = np.r_[True, track_id[1:] != track_id[:-1]]
    new_piece = new_track | np.r_[True, np.diff(frame) != 1]
    piece = np.cumsum(new_piece)  # 1, 2, … in sorted order
    labels = np.empty(len(tracks), dtype=np.int64)
    labels[order] = piece
    starts = np.flatnonzero(new_piece)
    ends = np.r_[starts[1:], len(frame)] - 1
    parents = np.where(new_track[starts], 0, piece[starts] - 1)
    lbep = pd.DataFrame(
        {"L": piece[starts], "B": frame[starts], "E": frame[ends], "P": parents}
    ).astype(np.int64)
    return labels, lbep


def relabel_stack(labels: np.ndarray, tracks: pd.DataFrame, new_labels: np.ndarray) -> np.ndarray:
    """(T, Y, X) stack with each row's ``label`` in its ``frame`` replaced by ``new_labels``.

    Pixels of labels not in ``tracks`` become 0. The result is uint16 when it fits, else uint32.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise TrackingError(f"labels must be a (T, Y, X) stack; got shape {labels.shape}")
    whole = labels.dtype.kind in "iu" or (
        labels.dtype.kind == "f"
        and np.isfinite(labels).all()
        and np.array_equal(labels, np.round(labels))
    )
    if not whole or labels.min(initial=0) < 0:
        raise TrackingError(
            f"labels must hold whole numbers >= 0 (a label image); got {labels.dtype}"
        )
    if labels.dtype.kind == "f":
        labels = labels.astype(np.int64)
    dtype = np.uint16 if len(new_labels) == 0 or new_labels.max() < 2**16 else np.uint32
    result = np.zeros(labels.shape, dtype=dtype)
    frames = tracks["frame"].to_numpy()
    old = tracks["label"].to_numpy(dtype=np.int64)
    for t in np.unique(frames):
        if not 0 <= t < len(labels):
            raise TrackingError(f"tracks refer to frame {t}; the label stack has {len(labels)}")
        here = frames == t
        size = max(int(labels[t].max()), int(old[here].max())) + 1
        present = np.zeros(size, dtype=bool)  # (1 byte per label value; no sort of the frame)
        present[labels[t].ravel()] = True
        absent = old[here][~present[old[here]]]
        if len(absent):
            raise TrackingError(
                f"frame {t}: label(s) {absent[:5].tolist()} of the tracks are not in the "
                f"label image of that frame"
            )
        lookup = np.zeros(size, dtype=dtype)
        lookup[old[here]] = new_labels[here]
        result[t] = lookup[labels[t]]
    return result


def write_ctc(
    folder: str | Path,
    labels: np.ndarray,
    tracks: pd.DataFrame,
    *,
    ground_truth: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``labels`` (T, Y, X) and ``tracks`` (``frame, label, track_id``) in CTC layout.

    Results go to ``folder/mask###.tif`` + ``res_track.txt``; ground truth (``ground_truth``)
    to ``folder/TRA/man_track###.tif`` + ``man_track.txt``. Returns the folder written.
    Each row must be one cell (``frame``, ``label`` unique) of its frame's label image.
    A folder already holding such files raises :class:`OutputExistsError` unless
    ``overwrite``, which removes them (masks of a longer stack would stay behind) once the
    new export has been checked; other files there are left alone.
    """
    folder = Path(folder)
    target = folder / "TRA" if ground_truth else folder
    prefix, track_file = (
        ("man_track", "man_track.txt") if ground_truth else ("mask", "res_track.txt")
    )
    missing = [c for c in ("frame", "label", "track_id") if c not in tracks]
    if missing:
        raise TrackingError(f"the tracks table lacks column(s) {missing} for the CTC format")
    labels_of_rows = pd.to_numeric(tracks["label"], errors="coerce").to_numpy(dtype=float)
    if not (np.isfinite(labels_of_rows) & (labels_of_rows >= 1)).all():
        raise TrackingError("every tracked cell needs its label (an integer >= 1) for CTC masks")
    if tracks.duplicated(["frame", "label"]).any():
        raise TrackingError("two rows of the tracks share a frame and label; each is one cell")
    mask_name = re.compile(rf"{prefix}[0-9]{{3,}}\.tif")  # only the names written here
    earlier = [path for path in sorted(target.glob("*.tif")) if mask_name.fullmatch(path.name)]
    earlier += [target / track_file] if (target / track_file).exists() else []
    if earlier and not overwrite:
        raise OutputExistsError(
            f"{target} already holds a CTC export ({earlier[0].name}, …); pass overwrite=True "
            f"to replace it"
        )
    new_labels, lbep = ctc_segments(tracks)
    stack = relabel_stack(labels, tracks, new_labels)  # checked before anything is removed
    for path in earlier:
        path.unlink()
    target.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(len(stack) - 1)))
    for t, frame in enumerate(stack):
        tifffile.imwrite(target / f"{prefix}{t:0{digits}d}.tif", frame, compression="zlib")
    lbep.to_csv(target / track_file, sep=" ", header=False, index=False)
    return target


def ctc_scores(ground_truth: str | Path, result: str | Path) -> dict[str, float]:
    """DET, TRA and the AOGM error counts of a CTC result folder against a ground-truth folder.

    ``ground_truth`` holds ``TRA/`` (see :func:`write_ctc`); needs ``py-ctcmetrics``.
    """
    try:
        from ctc_metrics.scripts.evaluate import evaluate_sequence
    except ImportError as exc:
        raise TrackingError("CTC scores need py-ctcmetrics (pip install py-ctcmetrics)") from exc
    track_file = Path(result) / "res_track.txt"
    if not track_file.is_file() or not track_file.read_text().strip():
        raise TrackingError(f"{result} holds no tracks to score (res_track.txt missing or empty)")
    scores = evaluate_sequence(str(result), str(ground_truth), metrics=["DET", "TRA"], threads=1)
    if scores.get("Valid", 1) == 0 or scores.get("DET") is None or scores.get("TRA") is None:
        raise TrackingError(f"{result} is not a valid CTC result (py-ctcmetrics: {scores})")
    keys = ("DET", "TRA", "AOGM", "AOGM_NS", "AOGM_FN", "AOGM_FP", "AOGM_ED", "AOGM_EA", "AOGM_EC")
    return {key: float(scores[key]) for key in keys if scores.get(key) is not None}
