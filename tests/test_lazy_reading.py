"""Lazy stacks: same values as the eager reader, bounded sampling and frame-by-frame reads."""

import pickle

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import tifffile
from dask.callbacks import Callback

from napari_bloodcell import reading
from napari_bloodcell.batch import analyze_files
from napari_bloodcell.errors import InputImageError
from napari_bloodcell.pipeline import AnalysisSettings, iter_analyze_stack
from napari_bloodcell.reading import (
    image_from_array,
    lazy_image_from_array,
    open_lazy,
    read_image,
)
from napari_bloodcell.synthetic import make_timelapse

RNG = np.random.default_rng(0)


class ReadsPerCompute(Callback):
    """Counts frame reads (calls of :meth:`read`) per Dask compute and raises when one
    compute would read more than ``limit`` frames, i.e. materialise more of the stack."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.counts, self._current = limit, [], 0

    def read(self, reader, *args):
        self._current += 1
        if self.active and self._current > self.limit:
            raise AssertionError(f"one compute reads more than {self.limit} frames")
        return reader(*args)

    def _start(self, dsk):
        self._current = 0

    @property
    def active(self) -> bool:
        return self._callback in Callback.active

    def _finish(self, dsk, state, errored):
        if self._current:
            self.counts.append(self._current)


@pytest.mark.parametrize(
    ("array", "write_kwargs", "axes"),
    [
        (
            RNG.integers(0, 255, (5, 40, 50, 3), dtype=np.uint8),
            {"metadata": {"axes": "TYXS"}},
            None,
        ),
        (RNG.integers(0, 4000, (4, 2, 40, 50), dtype=np.uint16), {"imagej": True}, "TCYX"),
        (RNG.integers(0, 4000, (3, 2, 40, 50), dtype=np.uint16), {"ome": True}, "TCYX"),
        (
            RNG.integers(0, 4000, (6, 40, 50), dtype=np.uint16),
            {"imagej": True, "truncate": True},
            "TYX",
        ),
        (
            RNG.random((3, 40, 50)).astype(np.float32),
            {"compression": "zlib", "photometric": "minisblack"},
            "TYX",
        ),
        (RNG.integers(0, 4000, (7, 40, 50), dtype=np.uint16), {"byteorder": ">"}, None),
        (RNG.integers(0, 255, (40, 50, 3), dtype=np.uint8), {}, None),
    ],
    ids=[
        "uint8-TYXS",
        "imagej-TCYX",
        "ome-TCYX",
        "imagej-truncated",
        "float-zlib",
        "big-endian",
        "rgb",
    ],
)
def test_short_stacks_read_lazily_equal_the_eager_reader(tmp_path, array, write_kwargs, axes):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, array, **write_kwargs)
    lazy, eager = open_lazy(path, axes), read_image(path, axes)
    assert lazy.data.shape == eager.data.shape and lazy.data.dtype == np.float32
    assert set(lazy.data.chunks[0]) == {1}  # one frame per chunk
    np.testing.assert_array_equal(lazy.data.compute(), eager.data)
    assert lazy.original_axes == eager.original_axes


def test_a_stack_after_a_thumbnail_takes_its_own_axes(tmp_path):
    """The lazy reader took the axes of the file's first series, a reduced RGB thumbnail
    (YXS), for the stack: "frames are 5×64 px" (the eager reader was right)."""
    path = tmp_path / "thumbnail_first.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(RNG.integers(0, 255, (32, 40, 3), np.uint8), photometric="rgb", subfiletype=1)
        tif.write(RNG.integers(0, 4000, (5, 64, 80), np.uint16), photometric="minisblack")
    lazy, eager = open_lazy(path), read_image(path)
    assert lazy.original_axes == eager.original_axes and lazy.data.shape == (5, 64, 80, 1)
    np.testing.assert_array_equal(lazy.data.compute(), eager.data)


def test_a_long_stack_takes_its_intensity_range_from_a_bounded_sample(tmp_path):
    stack = RNG.integers(100, 4000, (40, 32, 32), dtype=np.uint16)
    path = tmp_path / "long.tif"
    tifffile.imwrite(path, stack)
    lazy = open_lazy(path)
    assert len(lazy.sampled_frames) == reading.INTENSITY_SAMPLE_FRAMES
    assert lazy.sampled_frames[0] == 0 and lazy.sampled_frames[-1] == 39
    sample = stack[list(lazy.sampled_frames)].astype(np.float32)
    low, high = np.percentile(sample, [0.1, 99.9])
    assert (lazy.intensity.low, lazy.intensity.high) == pytest.approx((low, high))
    np.testing.assert_array_equal(lazy.data[25].compute()[..., 0], lazy.intensity.apply(stack[25]))


def test_a_single_big_frame_is_mapped_as_the_eager_reader_maps_it(monkeypatch):
    """A single frame over the sample budget was sampled at a pixel step: its mapping
    differed from read_image's (napari's Analyze widget), by up to half the range."""
    monkeypatch.setattr(reading, "INTENSITY_SAMPLE_VALUES", 32 * 32)
    frame = RNG.integers(100, 200, (64, 64), dtype=np.uint16)
    frame[1::2, 1::2] = 60000  # off any even pixel step
    lazy = lazy_image_from_array(frame)
    np.testing.assert_array_equal(lazy.data.compute(), image_from_array(frame).data)


def test_big_frames_are_sampled_over_the_whole_stack_at_a_pixel_step(monkeypatch):
    """Big frames were sampled fewer, down to frame 0 alone (4096² px): a stack whose first
    frame was dim saturated every later frame, or was refused as constant."""
    monkeypatch.setattr(reading, "INTENSITY_SAMPLE_VALUES", 3 * 32 * 32)
    stack = np.empty((3, 64, 64), np.uint16)
    stack[0] = RNG.integers(100, 200, (64, 64))
    stack[1:] = RNG.integers(1000, 3000, (2, 64, 64))
    lazy = lazy_image_from_array(stack, axes="TYX")
    assert lazy.sampled_frames == (0, 1, 2)
    assert lazy.intensity.high > 2900  # from the bright frames, sampled every 2 px
    assert float(lazy.data[1].compute().mean()) < 0.9  # not saturated
    stack[:] = 0
    stack[2, 5, 6] = 9  # not in the sample
    with pytest.raises(
        InputImageError, match=r"\(frames 0, 1, 2 sampled, every 2 px\): the image is constant"
    ):
        lazy_image_from_array(stack, axes="TYX")


def test_nan_in_an_unsampled_frame_is_refused_when_that_frame_is_read():
    stack = RNG.random((40, 16, 16)).astype(np.float32) * 10
    lazy = lazy_image_from_array(stack, source="s.tif")
    unsampled = next(t for t in range(40) if t not in lazy.sampled_frames)
    stack[unsampled, 3, 3] = np.nan
    lazy = lazy_image_from_array(stack, source="s.tif")
    lazy.data[lazy.sampled_frames[1]].compute()
    with pytest.raises(InputImageError, match=f"s.tif: frame {unsampled} contains 1 NaN"):
        lazy.data[unsampled].compute()


def test_nan_or_a_constant_in_the_sampled_frames_names_the_source_and_frame():
    stack = RNG.random((40, 16, 16)).astype(np.float32) * 10
    lazy = lazy_image_from_array(stack)
    stack[lazy.sampled_frames[2], 5, 5] = np.nan
    frame = lazy.sampled_frames[2]
    with pytest.raises(InputImageError, match=f"movie: frame {frame} contains 1 NaN"):
        lazy_image_from_array(stack, source="movie")
    with pytest.raises(InputImageError, match="movie: the image is constant"):
        lazy_image_from_array(np.ones((5, 16, 16), np.float32) * 3, source="movie")


def test_a_corrupt_page_names_the_file_and_page(tmp_path):
    path = tmp_path / "corrupt.tif"
    tifffile.imwrite(path, RNG.integers(0, 255, (5, 64, 64), dtype=np.uint8), compression="zlib")
    corrupt_page(path, 3)
    with pytest.raises(InputImageError, match="corrupt.tif: page 3 cannot be read"):
        open_lazy(path).data.compute()  # when sampled, or else when computed


def corrupt_page(path, page: int) -> None:
    """Overwrite the compressed data of one page with garbage."""
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[page].dataoffsets[0], tif.pages[page].databytecounts[0]
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(b"\x00garbage" * (count // 8))


def test_iter_analyze_stack_computes_a_dask_stack_one_frame_at_a_time():
    movie = make_timelapse(n_frames=4, shape=(64, 96), seed=3)
    reads = ReadsPerCompute(limit=1)
    stack = da.map_blocks(
        lambda block_id: reads.read(lambda t: movie.image[t : t + 1], block_id[0]),
        chunks=((1,) * 4, (64,), (96,), (3,)),
        meta=np.empty((0, 0, 0, 0), np.uint8),
    )
    image = lazy_image_from_array(stack, axes="TYXC")  # reads its sample: every frame
    with reads:
        results = list(iter_analyze_stack(image.data))
    assert reads.counts == [1, 1, 1, 1]
    assert [r.table["frame"].unique().tolist() for r in results if len(r.table)] == [
        [t] for t in range(4) if len(results[t].table)
    ]


def test_analyze_files_reads_a_stack_in_bounded_chunks(tmp_path, monkeypatch):
    movie = make_timelapse(n_frames=24, shape=(64, 96), seed=5)
    path = tmp_path / "movie.tif"
    with tifffile.TiffWriter(path) as writer:
        for frame in movie.image:  # page by page, as a camera would
            writer.write(frame, photometric="rgb", metadata=None)
    reads = ReadsPerCompute(limit=reading.INTENSITY_SAMPLE_FRAMES)
    read_page = reading._TiffPages.__getitem__
    monkeypatch.setattr(
        reading._TiffPages, "__getitem__", lambda pages, index: reads.read(read_page, pages, index)
    )
    with reads:
        summary = analyze_files(
            [path], tmp_path / "out", AnalysisSettings(), model=None, frames_per_unit=5
        )
    assert summary.failures == {} and summary.n_frames == 24
    sample, *units = reads.counts
    assert sample == reading.INTENSITY_SAMPLE_FRAMES and units == [5, 5, 5, 5, 4]
    labels = tifffile.imread(tmp_path / "out" / "labels" / "movie.tif")
    assert labels.shape == (24, 64, 96) and labels.dtype == np.uint32
    table = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert sorted(table["frame"].unique()) == list(range(24))


def test_zarr_stacks_open_lazily(tmp_path):
    zarr = pytest.importorskip("zarr")
    stack = RNG.integers(0, 255, (5, 40, 50), dtype=np.uint8)
    zarr.save_array(str(tmp_path / "s.zarr"), stack)
    lazy = open_lazy(tmp_path / "s.zarr")
    np.testing.assert_array_equal(lazy.data.compute()[..., 0], stack / np.float32(255))


@pytest.mark.parametrize(
    ("axes", "expected"),
    [
        (["t", "c", "y", "x"], "TCYX"),
        ([{"name": "t", "type": "time"}, {"name": "c"}, {"name": "y"}, {"name": "x"}], "TCYX"),
        ([{"name": "frame", "type": "time"}, {"name": "ch", "type": "channel"}, "y", "x"], "TCYX"),
        (None, "TCYX"),  # OME-Zarr 0.3 and older name no axes: inferred from the shape
        (["angle", "c", "y", "x"], "TCYX"),  # an axis it cannot name: inferred (was "?CYX")
    ],
)
def test_ome_zarr_levels_open_with_their_axes(tmp_path, axes, expected):
    """Axis names other than one letter were glued into an unusable axes string, and
    OME-Zarr without axes failed with "cannot be read as an image ('axes')"."""
    zarr = pytest.importorskip("zarr")
    stack = RNG.integers(0, 255, (4, 2, 40, 50), dtype=np.uint8)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    create = getattr(group, "create_array", None) or group.array  # zarr 3 / zarr 2
    create("0", data=stack)
    level = {"datasets": [{"path": "0"}], **({"axes": axes} if axes else {})}
    group.attrs["multiscales"] = [level]
    lazy = open_lazy(tmp_path / "s.zarr")
    assert lazy.original_axes == expected and lazy.data.shape == (4, 40, 50, 2)
    np.testing.assert_array_equal(
        lazy.data[1].compute(), np.moveaxis(stack[1], 0, -1) / np.float32(255)
    )


def _ome_zarr_image(group, stack: np.ndarray, scale: list[float], unit: str | None) -> None:
    """Write ``stack`` (T, C, Y, X) into ``group`` as a one-level OME-Zarr 0.4 image."""
    create = getattr(group, "create_array", None) or group.array  # zarr 3 / zarr 2
    create("0", data=stack)
    axes = [
        {"name": n, "type": "space" if n in "yx" else {"t": "time", "c": "channel"}[n]}
        for n in "tcyx"
    ]
    for axis in axes[2:]:
        axis.update({"unit": unit} if unit else {})
    transform = {"type": "scale", "scale": scale}
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [transform]}],
        }
    ]


@pytest.mark.parametrize(
    ("unit", "size", "expected"),
    [
        ("micrometer", 0.5, 0.5),
        ("nanometer", 500, 0.5),
        (None, 0.5, None),
        ("nanometer", 0.5, None),  # 0.0005 µm: not a microscope's calibration
    ],
)
def test_ome_zarr_pixel_size_comes_from_its_scale_and_unit(tmp_path, unit, size, expected):
    """The pixel size of an OME-Zarr image was never read (lengths in px only)."""
    zarr = pytest.importorskip("zarr")
    stack = RNG.integers(0, 4000, (3, 2, 40, 50), dtype=np.uint16)
    _ome_zarr_image(
        zarr.open_group(str(tmp_path / "s.zarr"), mode="w"), stack, [1, 1, size, size], unit
    )
    lazy = open_lazy(tmp_path / "s.zarr")
    assert lazy.original_axes == "TCYX" and lazy.pixel_size_um == expected


def test_a_bioformats2raw_store_opens_its_one_image_and_refuses_several(tmp_path):
    """bioformats2raw (and NGFF-Converter) put the image in the group "0" of a root marked
    "bioformats2raw.layout": such a store was refused ("a Zarr group without OME
    multiscales metadata"), and so was the image's own folder ("a folder, not an image")."""
    zarr = pytest.importorskip("zarr")
    stack = RNG.integers(0, 4000, (3, 2, 40, 50), dtype=np.uint16)
    root = zarr.open_group(str(tmp_path / "one.ome.zarr"), mode="w")
    root.attrs["bioformats2raw.layout"] = 3
    root.create_group("OME")  # the layout's metadata folder, not an image
    _ome_zarr_image(root.create_group("0"), stack, [1, 1, 0.65, 0.65], "micrometer")
    lazy = open_lazy(tmp_path / "one.ome.zarr")
    assert lazy.original_axes == "TCYX" and lazy.pixel_size_um == pytest.approx(0.65)
    frame = lazy.intensity.apply(np.moveaxis(stack[1], 0, -1))
    np.testing.assert_array_equal(lazy.data[1].compute(), frame)
    _ome_zarr_image(root.create_group("1"), stack, [1, 1, 0.65, 0.65], "micrometer")
    with pytest.raises(InputImageError, match="a bioformats2raw store of 2 images .series 0, 1."):
        open_lazy(tmp_path / "one.ome.zarr")


def test_zarr_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "zarr", None)
    (tmp_path / "s.zarr").mkdir()
    with pytest.raises(InputImageError, match="needs the zarr package"):
        open_lazy(tmp_path / "s.zarr")


@pytest.mark.parametrize(
    "picture",
    [
        RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8),
        RNG.integers(0, 256, (30, 40), dtype=np.uint8),
        np.dstack([RNG.integers(0, 256, (30, 40, 3)), np.full((30, 40), 255)]).astype(np.uint8),
        RNG.integers(0, 65536, (30, 40), dtype=np.uint16),
    ],
    ids=["rgb", "grey", "rgba", "grey16"],
)
def test_a_png_is_opened_without_keeping_its_pixels(tmp_path, picture):
    """Every PNG/JPEG of a batch was decoded and held until the run ended (8 MB per
    2000 × 1500 frame)."""
    import imageio.v3 as iio

    path = tmp_path / "picture.png"
    iio.imwrite(path, picture)
    image = open_lazy(path)
    held = [v for v in dict(image.data.__dask_graph__()).values() if isinstance(v, np.ndarray)]
    assert all(v.size < picture.size for v in held)
    assert picture.tobytes() not in pickle.dumps(image.data)  # nor sends them to a worker
    np.testing.assert_array_equal(image.data.compute(), read_image(path).data)


def test_opening_a_png_decodes_it_once_and_each_compute_once(tmp_path, monkeypatch):
    """Opening decoded a picture twice (to learn its shape, then again for its intensity
    sample): most of a batch's start-up over thousands of pictures."""
    import imageio.v3 as iio

    path = tmp_path / "picture.png"
    iio.imwrite(path, RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    decoded = []
    read = reading._read_with_imageio
    monkeypatch.setattr(reading, "_read_with_imageio", lambda p: decoded.append(p) or read(p))
    image = open_lazy(path)
    assert decoded == [path]
    first, second = image.data.compute(), image.data.compute()
    assert decoded == [path] * 3
    np.testing.assert_array_equal(first, second)


def test_pages_of_a_later_series_are_read_from_that_series(tmp_path):
    """Pages are read at their own offsets, whichever series of the file they are in
    (their read through the series used the file's first series)."""
    path = tmp_path / "two.tif"
    thumbnail = np.zeros((2, 8, 8), np.uint8)
    stack = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    tifffile.imwrite(path, thumbnail)
    tifffile.imwrite(path, stack, append=True)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[1]
        pages = reading._TiffPages.of(path, series, tif.byteorder)
    np.testing.assert_array_equal(pages[2, :, :], stack[2])
    # pages all in this file: nothing per page but their offsets, sent with every unit
    assert pages.other_files == () and pages.page_file is None


def test_a_chunk_carries_the_tasks_of_its_frames_whatever_the_stack_length(tmp_path):
    """Each chunk's slice was optimised over the whole stack's graph (start-up ∝ frames²);
    the chunks built instead from the stack's graph, once, must still be culled."""
    from napari_bloodcell.batch import _chunks

    sizes = []
    for n_frames in (12, 120):
        path = tmp_path / f"stack{n_frames}.tif"
        stack = np.random.default_rng(0).integers(0, 200, (n_frames, 16, 16), np.uint8)
        tifffile.imwrite(path, stack, metadata={"axes": "TYX"})
        image = open_lazy(path)
        chunks = _chunks(image, 5)
        assert [c.first for c in chunks] == list(range(0, n_frames, 5))
        np.testing.assert_array_equal(
            np.concatenate([c.read() for c in chunks]), np.asarray(image.data.compute())
        )
        sizes.append(len(dict(chunks[1].frames.__dask_graph__())))
    assert sizes[0] == sizes[1]


def test_a_page_is_read_without_walking_the_pages_before_it(tmp_path, monkeypatch):
    """Each page was found by its index, walking the headers of every page before it:
    reading a stack took time ∝ frames² (31 s for 8,000 pages instead of 1 s)."""
    path = tmp_path / "long.ome.tif"
    stack = np.arange(200 * 16 * 16, dtype=np.uint16).reshape(200, 16, 16)
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "TYX"})
    image = open_lazy(path)
    walked, headers = [], []
    seek = tifffile.TiffPages._seek
    monkeypatch.setattr(
        tifffile.TiffPages, "_seek", lambda pages, i: walked.append(i) or seek(pages, i)
    )
    for kind in (tifffile.TiffPage, tifffile.TiffFrame):  # any other walk reads each header
        init = kind.__init__
        monkeypatch.setattr(
            kind,
            "__init__",
            lambda self, *a, init=init, **k: headers.append(1) or init(self, *a, **k),
        )
    last = image.data[199].compute()
    assert max(walked, default=0) < 2  # (opening the file reads its first page)
    assert len(headers) <= 2  # the page asked for (and the first)
    np.testing.assert_array_equal(last, image.data.compute()[199])
