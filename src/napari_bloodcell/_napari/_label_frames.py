"""Label stacks that grow frame by frame and stay compressed in memory (no Qt here).

A batch over a 1,000-frame 512×512 stack would need 1 GB for uint32 instance labels
held as one array. Label frames are mostly background and compress ~100-1000× with
zlib, so :class:`CompressedLabelFrames` keeps each frame as compressed bytes and
:class:`LabelFramesView` shows the first frames as a ``(T, Y, X)`` array-like that napari
slices one frame at a time (napari's layer-data protocol: ``shape``, ``dtype``,
``__getitem__``). Painting in napari writes through ``__setitem__`` into the frames.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

COMPRESSION_LEVEL = 1
"""zlib level: label frames compress ~100× already at level 1, and it is the fastest."""


class CompressedLabelFrames:
    """Integer (Y, X) frames appended one by one and kept zlib-compressed.

    Memory is the compressed size (typically 1-20 kB per 512×512 frame) plus one
    decompressed frame kept for repeated reads of the same frame (napari redraws).
    """

    def __init__(self, frame_shape: tuple[int, int], dtype=np.uint32):
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.dtype = np.dtype(dtype)
        self._blobs: list[bytes] = []
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._blobs)

    def append(self, frame: np.ndarray) -> None:
        """Add the next frame (cast to the store's dtype; shape must be ``frame_shape``)."""
        self._blobs.append(self._encode(frame))

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as a new writable (Y, X) array."""
        return self._decoded(t).copy()

    def replace(self, t: int, frame: np.ndarray) -> None:
        """Overwrite frame ``t`` (an edit, e.g. painting in napari)."""
        self._blobs[t] = self._encode(frame)
        self._cached = None

    def view(self, n_frames: int | None = None) -> LabelFramesView:
        """The first ``n_frames`` (default: all so far) as a (T, Y, X) array-like."""
        return LabelFramesView(self, len(self) if n_frames is None else n_frames)

    @property
    def nbytes_compressed(self) -> int:
        return sum(map(len, self._blobs))

    def _encode(self, frame: np.ndarray) -> bytes:
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise ValueError(f"label frame of shape {frame.shape}, expected {self.frame_shape}")
        data = np.ascontiguousarray(frame, dtype=self.dtype)
        return zlib.compress(data.tobytes(), COMPRESSION_LEVEL)

    def _decoded(self, t: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != t:
            raw = zlib.decompress(self._blobs[t])
            frame = np.frombuffer(raw, self.dtype).reshape(self.frame_shape)
            frame.flags.writeable = False
            self._cached = (t, frame)
        return self._cached[1]


class LabelFramesView:
    """The first ``n_frames`` of a :class:`CompressedLabelFrames` as a (T, Y, X) array-like.

    Indexing decompresses only the frames selected on the first axis and returns a new
    array (like computing a dask array: writing into it leaves the frames unchanged);
    ``np.asarray`` decompresses all of them (what saving the layer to a file does).
    """

    def __init__(self, frames: CompressedLabelFrames, n_frames: int):
        if not 0 <= n_frames <= len(frames):
            raise ValueError(f"view of {n_frames} frames of a store of {len(frames)}")
        self._frames = frames
        self.shape = (n_frames, *frames.frame_shape)
        self.dtype = frames.dtype
        self.ndim = 3

    @property
    def nbytes_compressed(self) -> int:
        """Memory held by the whole frame store (all frames, compressed)."""
        return self._frames.nbytes_compressed

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        stacked = self._stack(range(self.shape[0]))
        return stacked if dtype is None else stacked.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        first, rest = _split_key(key)
        if isinstance(first, (int, np.integer)):
            return self._frames._decoded(self._frame_index(first))[rest].copy()
        times = np.arange(self.shape[0])[first]
        return self._stack(times.tolist())[(slice(None), *rest)]

    def __setitem__(self, key, value) -> None:
        """Write into frames, one frame decompressed at a time: ``view[t, ...] = v``,
        ``view[t0:t1, ...] = v`` or napari's paint indices ``view[(t, y, x)] = v`` (integer
        arrays)."""
        first, rest = _split_key(key)
        if isinstance(first, (int, np.integer)):
            self._write(self._frame_index(first), rest, value)
        elif isinstance(first, slice):
            times = range(self.shape[0])[first]
            per_frame = np.broadcast_to(0, self._frames.frame_shape)[rest].shape
            values = np.broadcast_to(np.asarray(value), (len(times), *per_frame))
            for t, frame_values in zip(times, values, strict=True):
                self._write(t, rest, frame_values)
        elif isinstance(first, np.ndarray) and np.issubdtype(first.dtype, np.integer):
            values = np.broadcast_to(np.asarray(value), first.shape)
            for t in np.unique(first):
                here = first == t
                pixels = tuple(np.asarray(index)[here] for index in rest)
                self._write(self._frame_index(int(t)), pixels, values[here])
        else:
            raise TypeError(
                "label frames are edited by frame number, slice of frames or integer arrays "
                f"of frame numbers; got {type(first).__name__}"
            )

    def _write(self, t: int, key: tuple, value) -> None:
        frame = self._frames.frame(t)
        frame[key] = value
        self._frames.replace(t, frame)

    def _frame_index(self, t: int) -> int:
        n = self.shape[0]
        if not -n <= t < n:
            raise IndexError(f"frame {t} out of range for {n} frames")
        return int(t) % n

    def _stack(self, times: Iterable[int]) -> np.ndarray:
        times = list(times)
        out = np.empty((len(times), *self._frames.frame_shape), self.dtype)
        for i, t in enumerate(times):
            out[i] = self._frames._decoded(t)
        return out


def _split_key(key) -> tuple[object, tuple]:
    """``(first-axis index, the rest)`` of an indexing key (``...`` means all of the rest)."""
    key = key if isinstance(key, tuple) else (key,)
    if not key:
        return slice(None), ()
    if key[0] is Ellipsis:
        return slice(None), key
    return key[0], key[1:]
