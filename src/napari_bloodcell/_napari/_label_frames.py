"""Label stacks that grow frame by frame and stay compressed in memory (no Qt here).

A batch over a 1,000-frame 512×512 stack would need 1 GB for uint32 instance labels
held as one array. Label frames are mostly background and compress ~100-1000× with
zlib, so :class:`CompressedLabelFrames` keeps each frame as compressed bytes and
:class:`LabelFramesView` shows the first frames as a ``(T, Y, X)`` array-like that napari
slices one frame at a time (napari's layer-data protocol: ``shape``, ``dtype``,
``__getitem__``). Painting in napari writes through ``__setitem__`` into the view's own
copy of the frames it edits: views of one store (one per redraw of a running batch) never
see each other's edits.
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
        with np.errstate(invalid="ignore"):  # (NaN: refused below)
            data = np.ascontiguousarray(frame, dtype=self.dtype)
        if frame.dtype != self.dtype and not np.array_equal(data, frame):  # 2**32 + 5 → 5
            raise ValueError(
                f"label values must be whole numbers that {self.dtype} holds (found "
                f"{np.nanmin(frame)}…{np.nanmax(frame)}{', NaN' if np.isnan(frame).any() else ''})"
            )
        return zlib.compress(data.tobytes(), COMPRESSION_LEVEL)

    def _decoded(self, t: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != t:
            self._cached = (t, self._decode(self._blobs[t]))
        return self._cached[1]

    def _decode(self, blob: bytes) -> np.ndarray:
        """A read-only (Y, X) frame from its compressed bytes."""
        frame = np.frombuffer(zlib.decompress(blob), self.dtype).reshape(self.frame_shape)
        frame.flags.writeable = False
        return frame


class _ShapedArrayLike:
    """What napari reads of an array-like besides indexing: ``size`` and ``len`` from
    ``shape``."""

    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]


class LabelFramesView(_ShapedArrayLike):
    """The first ``n_frames`` of a :class:`CompressedLabelFrames` as a (T, Y, X) array-like.

    Indexing decompresses only the frames selected on the first axis and returns a new
    array (like computing a dask array: writing into it leaves the frames unchanged);
    ``np.asarray`` decompresses all of them (what saving the layer to a file does).
    Writing (painting) keeps the edited frames in this view, compressed: the store and
    its other views are unchanged (a layer edited by hand during a batch, and the layer
    the batch then shows, shared their edits both ways).
    """

    def __init__(self, frames: CompressedLabelFrames, n_frames: int):
        if not 0 <= n_frames <= len(frames):
            raise ValueError(f"view of {n_frames} frames of a store of {len(frames)}")
        self._frames = frames
        self._edited: dict[int, bytes] = {}  # frame → its edited copy, compressed
        self._edited_cache: tuple[int, np.ndarray] | None = None
        self.shape = (n_frames, *frames.frame_shape)
        self.dtype = frames.dtype
        self.ndim = 3

    @property
    def nbytes_compressed(self) -> int:
        """Memory held by the whole frame store (all frames, compressed) and this view's
        edited frames."""
        return self._frames.nbytes_compressed + sum(map(len, self._edited.values()))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        stacked = self._stack(range(self.shape[0]))
        return stacked if dtype is None else stacked.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        first, rest = _split_key(key)
        if isinstance(first, (int, np.integer)):
            return self._read(self._frame_index(first))[rest].copy()
        if _is_index_array(first) and rest and all(map(_is_index_array, rest)):
            # napari's (t, y, x) integer arrays: one value per pixel
            out = np.empty(first.shape, self.dtype)
            for t in np.unique(first):
                here = first == t
                pixels = tuple(np.asarray(index)[here] for index in rest)
                out[here] = self._read(self._frame_index(int(t)))[pixels]
            return out
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
        elif _is_index_array(first):
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

    def _read(self, t: int) -> np.ndarray:
        """Frame ``t`` (read-only): this view's edited copy, else the store's."""
        if t not in self._edited:
            return self._frames._decoded(t)
        if self._edited_cache is None or self._edited_cache[0] != t:
            self._edited_cache = (t, self._frames._decode(self._edited[t]))
        return self._edited_cache[1]

    def _write(self, t: int, key: tuple, value) -> None:
        frame = self._read(t).copy()
        frame[key] = value
        self._edited[t] = self._frames._encode(frame)
        self._edited_cache = None

    def _frame_index(self, t: int) -> int:
        n = self.shape[0]
        if not -n <= t < n:
            raise IndexError(f"frame {t} out of range for {n} frames")
        return int(t) % n

    def _stack(self, times: Iterable[int]) -> np.ndarray:
        times = list(times)
        out = np.empty((len(times), *self._frames.frame_shape), self.dtype)
        for i, t in enumerate(times):
            out[i] = self._read(t)
        return out


class WithChannelAxis(_ShapedArrayLike):
    """A label array-like (e.g. a :class:`LabelFramesView`) with a size-1 axis inserted at
    ``axis``, for an image whose channels napari shows on a slider (see ``Placement``).

    Indexing (integers and slices, or one integer array per axis) drops the key's entry
    for that axis (any index of a size-1 axis selects its one plane) and passes the rest
    on, so reads and paints reach the frames underneath.
    """

    def __init__(self, data, axis: int):
        if not 0 <= axis <= data.ndim:
            raise ValueError(f"axis {axis} out of range for {data.ndim} dimensions")
        self._data, self.axis = data, axis
        self.shape = (*data.shape[:axis], 1, *data.shape[axis:])
        self.dtype = data.dtype
        self.ndim = data.ndim + 1

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.expand_dims(np.asarray(self._data, dtype=dtype), self.axis)

    def __getitem__(self, key):
        inner, kept_at = self._inner_key(key)
        out = self._data[inner]
        return out if kept_at is None else np.expand_dims(out, kept_at)

    def __setitem__(self, key, value) -> None:
        inner, kept_at = self._inner_key(key)
        value = np.asarray(value)
        if kept_at is not None and value.ndim > kept_at and value.shape[kept_at] == 1:
            value = np.squeeze(value, kept_at)
        self._data[inner] = value

    def _inner_key(self, key) -> tuple[tuple, int | None]:
        """The key without this axis's entry, and where a sliced channel axis stays in the
        result (None when the entry was an integer or an index array)."""
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = (*key[:at], *[slice(None)] * (self.ndim - len(key) + 1), *key[at + 1 :])
        key = (*key, *[slice(None)] * (self.ndim - len(key)))
        arrays = [not isinstance(k, (slice, int, np.integer)) for k in key]
        if any(arrays) and not all(arrays):
            raise TypeError(
                "index by integers and slices, or by one integer array per axis (napari's "
                f"pixels); got {key!r}"
            )
        channel = key[self.axis]
        inner = key[: self.axis] + key[self.axis + 1 :]
        if not isinstance(channel, slice):
            return inner, None
        return inner, sum(isinstance(k, slice) for k in key[: self.axis])


def _is_index_array(index) -> bool:
    return isinstance(index, np.ndarray) and np.issubdtype(index.dtype, np.integer)


def _split_key(key) -> tuple[object, tuple]:
    """``(first-axis index, the rest)`` of an indexing key (``...`` means all of the rest)."""
    key = key if isinstance(key, tuple) else (key,)
    if not key:
        return slice(None), ()
    if key[0] is Ellipsis:
        return slice(None), key
    return key[0], key[1:]
