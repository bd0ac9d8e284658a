"""Reading files and arrays into (T, Y, X, C) float32 in [0, 1]."""

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_bloodcell.errors import InputImageError
from napari_bloodcell.reading import (
    image_from_array,
    infer_axes,
    normalise_intensity,
    open_lazy,
    read_image,
    recorded_frame_interval_s,
)
from napari_bloodcell.synthetic import make_smear

from .helpers import write_ome_set


@pytest.mark.parametrize(
    ("shape", "axes"),
    [
        ((20, 30), "YX"),
        ((20, 30, 3), "YXC"),
        ((5, 20, 30), "TYX"),
        ((1, 20, 30), "TYX"),
        ((5, 20, 30, 3), "TYXC"),
        ((5, 2, 20, 30), "TCYX"),
    ],
)
def test_axes_are_inferred_from_the_shape(shape, axes):
    assert infer_axes(shape) == axes


@pytest.mark.parametrize(
    "shape", [(3, 20, 4), (4, 3, 20, 30, 2), (4, 20, 30, 8), (2, 20, 30), (3, 20, 30), (4, 9, 9)]
)  # (2–4, Y, X): frames, or channels first?
def test_ambiguous_shapes_ask_for_axes(shape):
    with pytest.raises(InputImageError, match="axes"):
        infer_axes(shape)


def test_explicit_axes_reorder_to_tyxc():
    rng = np.random.default_rng(0)
    array = rng.random((3, 4, 20, 30))  # C, T, Y, X
    image = image_from_array(array, axes="CTYX")
    assert image.data.shape == (4, 20, 30, 3)
    np.testing.assert_allclose(image.data[2, 5, 7], array[:, 2, 5, 7], rtol=1e-6)


def test_grey_and_rgba_frames():
    grey = image_from_array(np.arange(400, dtype=np.uint8).reshape(20, 20) % 200)
    assert grey.data.shape == (1, 20, 20, 1)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = np.arange(20)
    rgba[..., 3] = 255
    assert image_from_array(rgba).data.shape == (1, 20, 20, 3)


def test_intensity_rules_are_explicit():
    np.testing.assert_allclose(normalise_intensity(np.array([0, 51, 255], np.uint8)), [0, 0.2, 1])
    sixteen = normalise_intensity(np.linspace(100, 4000, 1000).astype(np.uint16))
    assert sixteen.min() == 0 and sixteen.max() == 1 and sixteen.dtype == np.float32
    unit_float = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(normalise_intensity(unit_float), unit_float, rtol=1e-6)
    wide_float = normalise_intensity(np.linspace(-5, 500, 1000))
    assert wide_float.min() >= 0 and wide_float.max() <= 1


def _bright_field(top: float, dtype=np.uint16) -> np.ndarray:
    """A (Y, X, 3) colour picture of mostly bright background (``top``) with a dark cell."""
    picture = np.full((20, 20, 3), top, np.float64)
    picture[5:10, 5:10] = top / 4
    return picture.astype(dtype)


def test_bright_colour_pictures_are_mapped_by_bit_depth_never_stretched():
    twelve_bit = _bright_field(3000)  # a 12-bit camera's maximum
    np.testing.assert_allclose(normalise_intensity(twelve_bit, colour=True), twelve_bit / 4095)
    assert normalise_intensity(_bright_field(200), colour=True).max() == 200 / 255
    beyond_16_bits = normalise_intensity(_bright_field(70000, np.float64), colour=True)
    assert beyond_16_bits.max() == np.float32(70000 / (2**18 - 1))
    overshoot = normalise_intensity(_bright_field(1.04, np.float64), colour=True)
    np.testing.assert_allclose([overshoot.min(), overshoot.max()], [0.26, 1])  # clipped
    for stretched in (
        normalise_intensity(twelve_bit),  # channels, not a colour picture
        normalise_intensity(_bright_field(3000, np.int16) - 1000, colour=True),  # negatives
        normalise_intensity(4095 - twelve_bit, colour=True),  # dark: fluorescence as RGB
    ):
        assert stretched.min() == 0 and stretched.max() == 1


@pytest.mark.parametrize(
    ("bits", "write"),
    [
        (16, lambda rgb: rgb.astype(np.uint16) * 257),
        (12, lambda rgb: rgb.astype(np.uint16) * 16),
        (8, lambda rgb: rgb.astype(np.float32)),
    ],  # fmt: skip
)
def test_a_deep_colour_smear_keeps_the_colours_of_its_8_bit_version(tmp_path, bits, write):
    """A 16-bit export of a smear was stretched from its percentiles: hues shifted and the
    smear detector (which reads colours) found three times the platelets."""
    from napari_bloodcell.pipeline import analyze_frame

    rgb = make_smear(shape=(240, 320), n_rbc=12, n_wbc=1, n_platelets=3, seed=4).image
    tifffile.imwrite(tmp_path / "deep.tif", write(rgb), photometric="rgb")
    eight_bit = image_from_array(rgb).data
    deep = read_image(tmp_path / "deep.tif").data
    np.testing.assert_allclose(deep, eight_bit, atol=0.004 if bits == 12 else 1e-6)  # 4080/4095
    np.testing.assert_allclose(open_lazy(tmp_path / "deep.tif").data.compute(), deep)
    labels, expected = (analyze_frame(frame[0], None).labels for frame in (deep, eight_bit))
    assert labels.max() == expected.max() > 5
    assert np.mean((labels > 0) == (expected > 0)) > (0.995 if bits == 12 else 1 - 1e-9)


def test_fluorescence_saved_as_16_bit_rgb_is_stretched_not_mapped_by_bit_depth(tmp_path):
    """The bit-depth rule for colour pictures took 3-channel fluorescence too (a tifffile
    default writes it as RGB): its dark level kept and its signal squeezed, cells lost."""
    from napari_bloodcell.synthetic import make_timelapse

    movie = make_timelapse(3, (64, 96), n_leukocytes=2, n_platelets=4, seed=0).image
    counts = movie.astype(np.uint16) * 16 + 100  # a camera's counts above its dark level
    tifffile.imwrite(tmp_path / "fluo.tif", counts, photometric="rgb")
    for read in (read_image, open_lazy):
        data = np.asarray(read(tmp_path / "fluo.tif").data)
        assert np.percentile(data, 0.1) == 0 and np.percentile(data, 99.9) == 1


def test_channels_named_by_metadata_are_stretched_even_three_of_them(tmp_path):
    channels = np.zeros((3, 40, 50), np.uint16)
    channels[:, 10:20, 10:20] = [[[400]], [[1200]], [[3000]]]
    channels += 100
    tifffile.imwrite(tmp_path / "c3.ome.tif", channels, metadata={"axes": "CYX"})
    image = read_image(tmp_path / "c3.ome.tif").data
    assert image.max() == 1 and image.min() == 0  # stretched: 100 → 0, 3000 → 1


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((20, 20), np.nan), "NaN"),
        (np.array([[np.inf] * 20] * 20), "NaN or infinite"),
        (np.zeros((20, 20), np.uint8), "constant"),
        (np.zeros((0, 20)), "zero size"),
        (np.ones((1, 1)) * np.array([[0.5]]), "need at least"),
        (np.zeros((4, 4, 20, 30, 2, 2)), "axes"),
    ],
)
def test_bad_arrays_are_refused_clearly(array, message):
    with pytest.raises(InputImageError, match=message):
        image_from_array(array)


def test_read_png_jpeg_and_multipage_tiff(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", rgb)
    iio.imwrite(tmp_path / "a.jpg", rgb)
    stack = rng.integers(0, 4095, (5, 24, 32), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", stack)
    np.testing.assert_allclose(read_image(tmp_path / "a.png").data[0], rgb / 255, atol=1e-6)
    assert read_image(tmp_path / "a.jpg").data.shape == (1, 24, 32, 3)
    assert read_image(tmp_path / "s.tif").data.shape == (5, 24, 32, 1)


@pytest.mark.parametrize("compression", ["lzw", "zlib", "jpeg"])
def test_compressed_tiffs_from_microscope_software_are_read(tmp_path, compression):
    """LZW needs the imagecodecs package, which a fresh install did not bring."""
    rgb = np.random.default_rng(3).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", rgb, compression=compression, photometric="rgb")
    read = read_image(tmp_path / "c.tif").data[0]
    lazy = open_lazy(tmp_path / "c.tif").data.compute()[0]
    np.testing.assert_array_equal(read, lazy)
    if compression != "jpeg":  # lossy
        np.testing.assert_allclose(read, rgb / 255, atol=1e-6)


def test_ome_tiff_axes_and_pixel_size(tmp_path):
    data = np.random.default_rng(2).integers(0, 255, (3, 2, 24, 32), dtype=np.uint8)
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TCYX", "PhysicalSizeX": 0.25})
    image = read_image(path)
    assert image.data.shape == (3, 24, 32, 2)
    assert image.pixel_size_um == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"ome": True, "metadata": {"PhysicalSizeX": 325, "PhysicalSizeXUnit": "nm"}}, 0.325),
        ({"ome": True, "metadata": {"PhysicalSizeX": 2, "PhysicalSizeXUnit": "pc"}}, None),
        ({"imagej": True, "resolution": (1 / 0.325, 1 / 0.325), "metadata": {"unit": "um"}}, 0.325),
        ({"imagej": True, "resolution": (1 / 0.5, 1 / 0.5), "metadata": {"unit": "micron"}}, 0.5),
        ({"imagej": True, "resolution": (2.0, 2.0), "metadata": {"unit": "pixel"}}, None),
        ({"imagej": True, "resolution": (5e3, 5e3), "metadata": {"unit": "cm"}}, 2.0),  # was None
        ({"imagej": True, "resolution": (28.35, 28.35), "metadata": {"unit": "cm"}}, None),  # dpi
        ({"ome": True, "metadata": {"PhysicalSizeX": 350, "PhysicalSizeXUnit": "µm"}}, None),
        ({"ome": True, "resolution": (5e4, 5e4), "resolutionunit": "CENTIMETER"}, 0.2),  # was None
        ({"photometric": "minisblack"}, None),  # no calibration
        ({"resolution": (5e4, 5e4), "resolutionunit": "CENTIMETER"}, 0.2),  # plain TIFF tags
        ({"resolution": (25400 / 0.2, 25400 / 0.2), "resolutionunit": "INCH"}, 0.2),
        ({"resolution": (5, 5), "resolutionunit": 5}, 0.2),  # tifffile's µm unit
        ({"resolution": (72, 72), "resolutionunit": "INCH"}, None),  # a document's dpi
        ({"resolution": (2400, 2400), "resolutionunit": "INCH"}, None),  # 10.6 µm: a scan's
        ({"resolution": (5, 5), "resolutionunit": "NONE"}, None),
    ],
)  # fmt: skip
def test_pixel_size_from_ome_units_and_imagej_calibration(tmp_path, kwargs, expected):
    """(Plain TIFF resolution tags, e.g. Bio-Formats' or a vendor's export in cm, were
    ignored: no µm columns, segmentation at the reference scale.)"""
    path = tmp_path / "x.tif"
    tifffile.imwrite(
        path, np.random.default_rng(2).integers(0, 255, (3, 24, 32), np.uint8), **kwargs
    )
    found = read_image(path, axes="TYX").pixel_size_um
    assert found == (None if expected is None else pytest.approx(expected, rel=1e-4))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"imagej": True, "resolution": (1 / 0.65, 1 / 0.5), "metadata": {"unit": "um"}},
        {"ome": True, "metadata": {"PhysicalSizeX": 0.65, "PhysicalSizeY": 0.5}},
        {"resolution": (1e4 / 0.65, 1e4 / 0.5), "resolutionunit": "CENTIMETER"},
    ],
)
def test_pixels_that_are_not_square_are_refused(tmp_path, kwargs):
    """Only the X size was read: Y lengths and areas in µm came out wrong."""
    path = tmp_path / "x.tif"
    tifffile.imwrite(
        path, np.random.default_rng(2).integers(0, 255, (3, 24, 32), np.uint8), **kwargs
    )
    with pytest.raises(InputImageError, match="0.65 µm wide and 0.5 µm high"):
        read_image(path, axes="TYX")


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"", "empty.png", "empty"),
        (b"not an image at all", "fake.jpg", "cannot be read"),
        (b"II*\x00garbage", "broken.tif", "cannot be read"),
        (b"x", "table.csv", "unsupported"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputImageError, match=message) as error:
        read_image(path)
    assert name in str(error.value)


def test_truncated_jpeg_is_refused(tmp_path):
    iio.imwrite(
        tmp_path / "full.jpg", np.random.default_rng(3).integers(0, 255, (64, 64, 3), np.uint8)
    )
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputImageError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")


def test_a_cmyk_jpeg_is_read_in_rgb(tmp_path):
    """Its ink channels were taken for red, green, blue and alpha: inverted colours."""
    from PIL import Image

    rgb = make_smear(shape=(240, 320), n_rbc=3, n_wbc=1, seed=4).image
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.data.shape == (1, 240, 320, 3)
    assert np.abs(image.data[0] * 255 - rgb).mean() < 3  # JPEG loss only


def test_missing_file():
    with pytest.raises(InputImageError, match="no such file"):
        read_image("does/not/exist.png")


@pytest.mark.parametrize(("name", "hint"), [("frames", ""), ("stack.zarr", "read lazily")])
def test_a_folder_is_named_a_folder(tmp_path, name, hint):
    """A folder was reported as "no such file"."""
    (tmp_path / name).mkdir()
    with pytest.raises(InputImageError, match=f"is a folder, not an image file.*{hint}"):
        read_image(tmp_path / name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.uint32])
def test_extreme_ranges_do_not_overflow_to_nan(dtype):
    """Found by hypothesis: float64 values near float32's maximum became inf, then NaN."""
    info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
    array = np.full((12, 12), info.max, dtype=dtype)
    array[0, :6] = info.min
    data = image_from_array(array).data
    assert np.isfinite(data).all() and data.min() == 0 and data.max() == 1


@pytest.mark.parametrize(
    ("shape", "kwargs", "expected"),
    [
        ((4, 24, 32), {"ome": True, "metadata": {"axes": "CYX"}}, (1, 24, 32, 4)),
        ((4, 24, 32), {"imagej": True, "metadata": {"axes": "CYX"}}, (1, 24, 32, 4)),
        ((3, 4, 24, 32), {"imagej": True, "metadata": {"axes": "TCYX"}}, (3, 24, 32, 4)),
    ],
)
def test_four_channels_named_by_the_files_metadata_are_channels(tmp_path, shape, kwargs, expected):
    """An OME or ImageJ hyperstack of 4 fluorescence channels was refused as an RGBA
    picture with a varying alpha ("give the axes explicitly (e.g. YXC)")."""
    from napari_bloodcell.reading import open_lazy

    data = np.random.default_rng(5).integers(0, 4000, shape, dtype=np.uint16)
    path = tmp_path / "four.tif"
    tifffile.imwrite(path, data, **kwargs)
    eager = read_image(path)
    assert eager.data.shape == expected
    lazy = open_lazy(path)
    np.testing.assert_array_equal(lazy.data.compute(scheduler="sync"), eager.data)


@pytest.mark.parametrize("kwargs", [{"ome": True}, {"imagej": True}])
def test_an_empty_fourth_channel_named_by_the_files_metadata_is_kept(tmp_path, kwargs):
    """A constant 4th channel of a CYX file is an unused channel, not an alpha: dropping
    it left 3 channels, and a mapping to channel 3 failed as out of range."""
    from napari_bloodcell.reading import open_lazy

    data = np.random.default_rng(7).integers(0, 4000, (4, 24, 32), dtype=np.uint16)
    data[3] = 0
    path = tmp_path / "empty_fourth.tif"
    tifffile.imwrite(path, data, metadata={"axes": "CYX"}, **kwargs)
    assert read_image(path).data.shape == (1, 24, 32, 4)
    assert open_lazy(path).data.shape == (1, 24, 32, 4)


def test_a_grey_png_with_alpha_is_read_as_grey(tmp_path):
    """Its (Y, X, 2) array was taken for Y frames of X × 2 px: "frames are 32×2 px"."""
    from PIL import Image

    from napari_bloodcell.reading import VaryingAlphaError, open_lazy

    grey = np.random.default_rng(6).integers(0, 255, (24, 32), dtype=np.uint8)
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA").save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert image.data.shape == (1, 24, 32, 1)
    np.testing.assert_allclose(image.data[0, ..., 0], grey / 255, atol=1e-6)
    assert open_lazy(tmp_path / "la.png").data.shape == (1, 24, 32, 1)
    Image.fromarray(np.dstack([grey, grey[::-1]]), "LA").save(tmp_path / "cut.png")
    with pytest.raises(VaryingAlphaError, match="cut.png: a grey image with a varying"):
        read_image(tmp_path / "cut.png")


@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_a_grey_tiff_with_alpha_is_read_as_grey(tmp_path, planar):
    """Its alpha sample was read as a second (fluorescence) channel."""
    from napari_bloodcell.reading import VaryingAlphaError, open_lazy

    grey = np.random.default_rng(7).integers(0, 255, (6, 24, 32), dtype=np.uint8)
    alpha = np.full_like(grey, 255)
    axis = -1 if planar == "contig" else 1
    kwargs = {"photometric": "minisblack", "extrasamples": ["unassalpha"], "planarconfig": planar}
    tifffile.imwrite(tmp_path / "la.tif", np.stack([grey, alpha], axis=axis), **kwargs)
    for read in (read_image, open_lazy):
        image = read(tmp_path / "la.tif")
        assert image.data.shape == (6, 24, 32, 1)
        np.testing.assert_allclose(np.asarray(image.data)[..., 0], grey / 255, atol=1e-6)
    cut = np.stack([grey, grey[:, ::-1]], axis=axis)
    tifffile.imwrite(tmp_path / "cut.tif", cut, **kwargs)
    for read in (read_image, open_lazy):
        with pytest.raises(VaryingAlphaError, match="cut.tif: a grey image with a varying"):
            read(tmp_path / "cut.tif")


def test_a_picture_over_pillows_own_limit_says_which_limit(tmp_path, monkeypatch):
    """The refusal read "over the pixel budget", though raising the plugin's budget
    ($NAPARI_BLOODCELL_MAX_FRAME_PIXELS) could not help: Pillow's limit had refused it."""
    from PIL import Image

    iio.imwrite(tmp_path / "big.png", np.zeros((30, 40, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # as a 180 Mpx picture meets it
    with pytest.raises(InputImageError, match="pixel budget of Pillow.* save the frame as TIFF"):
        read_image(tmp_path / "big.png")


@pytest.mark.parametrize("channels", [3, 4])
def test_a_16_bit_colour_png_keeps_its_16_bits(tmp_path, channels):
    """Pillow decodes 16-bit RGB(A) PNGs to 8 bits: the low byte was dropped silently and
    the image reported as uint8."""
    import imagecodecs

    rgb = np.random.default_rng(4).integers(0, 65536, (30, 40, channels), dtype=np.uint16)
    rgb[0, 1, :3] = [255, 256, 257]  # equal in their high byte
    if channels == 4:
        rgb[..., 3] = 65535  # opaque
    (tmp_path / "c16.png").write_bytes(imagecodecs.png_encode(rgb))
    image = read_image(tmp_path / "c16.png")
    assert image.original_dtype == "uint16" and image.data.shape == (1, 30, 40, 3)
    assert len(set(image.data[0, 0, 1].tolist())) == 3


def test_16_bit_grey_alpha_and_transparent_colour_pngs(tmp_path):
    """Pillow calls them RGB/RGBA too: the 16-bit colour path gave 2 or 4 channels. A
    16-bit grey + alpha PNG was then read as Pillow decodes it: 8-bit RGB (three equal
    channels, the low byte lost), not grey as an 8-bit one with a constant alpha is."""
    import zlib

    import imagecodecs

    rng = np.random.default_rng(5)
    grey = rng.integers(0, 65536, (32, 40), dtype=np.uint16)
    grey_alpha = np.dstack([grey, np.full((32, 40), 65535, np.uint16)])
    (tmp_path / "la16.png").write_bytes(imagecodecs.png_encode(grey_alpha))
    image = read_image(tmp_path / "la16.png")
    assert image.data.shape == (1, 32, 40, 1) and image.original_dtype == "uint16"
    assert len(np.unique(image.data)) > 1000  # 16 bits kept (8 bits: at most 256 values)
    grey_alpha[0, 0, 1] = 0  # one transparent pixel
    (tmp_path / "la16.png").write_bytes(imagecodecs.png_encode(grey_alpha))
    with pytest.raises(InputImageError, match="varying transparency"):
        read_image(tmp_path / "la16.png")
    rgb = rng.integers(0, 65536, (32, 40, 3), dtype=np.uint16)
    data = imagecodecs.png_encode(rgb)
    trns = b"tRNS" + rgb[0, 0].astype(">u2").tobytes()  # one colour transparent
    chunk = (len(trns) - 4).to_bytes(4, "big") + trns + zlib.crc32(trns).to_bytes(4, "big")
    (tmp_path / "t16.png").write_bytes(data[:33] + chunk + data[33:])  # after IHDR
    assert read_image(tmp_path / "t16.png").data.shape == (1, 32, 40, 3)


def test_a_tiff_of_thumbnails_only_says_so(tmp_path):
    """It read "cannot be read as an image (list index out of range)"."""
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tif:
        tif.write(np.zeros((32, 32), np.uint8), subfiletype=1)  # a reduced-resolution image
    with pytest.raises(InputImageError, match="only reduced-resolution images"):
        read_image(tmp_path / "thumb.tif")


def _frames_with_a_cell(n: int = 6) -> np.ndarray:
    frames = np.random.default_rng(2).normal(100, 5, (n, 64, 80))
    for t in range(n):
        frames[t, 20:42, 5 + 5 * t : 27 + 5 * t] += 3000
    return frames.astype(np.uint16)


@pytest.mark.parametrize("binary_only", [True, False])
def test_a_multi_file_ome_tiff_is_read_from_its_first_file_and_its_parts_refused(
    tmp_path, binary_only
):
    """The second file of a Micro-Manager acquisition was analysed as a stack of its own
    (its frames renumbered from 0) or as the whole acquisition again: frames twice."""
    import warnings

    from napari_bloodcell.reading import PartOfAnotherFileError

    frames = _frames_with_a_cell()
    first, part = write_ome_set(tmp_path, frames, binary_only)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tifffile's "reading array from closed file"
        eager, lazy = read_image(first).data, open_lazy(first).data.compute()
    np.testing.assert_array_equal(eager, lazy)
    assert eager.shape == (6, 64, 80, 1)
    assert np.corrcoef(eager[..., 0].ravel(), frames.ravel())[0, 1] > 0.9999
    for read in (read_image, open_lazy):
        with pytest.raises(PartOfAnotherFileError, match="analyse exp_MMStack.ome.tif") as error:
            read(part)
        assert error.value.first_file == first


def test_an_ome_tiff_missing_some_of_its_pages_says_so(tmp_path):
    """An acquisition stopped early: its metadata lists 6 frames, the file holds 3. The
    missing frames were read as zeros (read_image) or failed with a library message."""
    frames = _frames_with_a_cell()
    first, _ = write_ome_set(tmp_path, frames, binary_only=True)
    (tmp_path / "exp_MMStack_1.ome.tif").unlink()  # the second file lost
    for read in (read_image, open_lazy):
        with pytest.raises(InputImageError, match="lists 6 pages but 3 of them .* stopped early"):
            read(first)


def test_an_interrupt_during_a_picture_decode_is_raised_when_it_ends(tmp_path, monkeypatch):
    """Ctrl-C while imageio built its reader left it half-built: a batch stopped by Ctrl-C
    ended with imageio's traceback ("Exception ignored in … PluginV3.__del__")."""
    import os
    import signal
    import time

    from napari_bloodcell import reading

    path = tmp_path / "a.png"
    iio.imwrite(path, np.full((16, 16, 3), 9, np.uint8))
    decode, finished = iio.imread, []

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the signal's handler runs here
        finished.append(True)
        return decode(*args, **kwargs)

    monkeypatch.setattr(iio, "imread", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reading._read_with_imageio(path)
    assert finished == [True]  # the decode ran to its end, then the interrupt came
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.parametrize(
    ("metadata", "seconds"),
    [
        ({"TimeIncrement": 250, "TimeIncrementUnit": "ms"}, 0.25),
        ({"TimeIncrement": 2}, 2.0),  # OME's default unit: s
        ({"TimeIncrement": 2, "TimeIncrementUnit": "ps"}, None),  # a unit not known here
        (  # Micro-Manager: only each plane's time (uneven: the median step)
            {"Plane": {"TheT": [0, 1, 2], "DeltaT": [0, 2010, 3990], "DeltaTUnit": ["ms"] * 3}},
            1.995,
        ),
        ({"imagej": True, "finterval": 1.5, "tunit": "min"}, 90.0),
        ({"imagej": True, "finterval": 500, "tunit": "msec"}, 0.5),
        ({"imagej": True, "finterval": 2, "tunit": "\\u00B5s"}, 2e-6),  # ImageJ's escape
        ({"imagej": True, "finterval": 0}, None),
        ({}, None),
    ],
)
def test_the_frame_interval_a_tiff_records(tmp_path, metadata, seconds):
    path = tmp_path / "movie.ome.tif"
    imagej = metadata.pop("imagej", False)
    if imagej:
        path = tmp_path / "movie.tif"
    tifffile.imwrite(
        path, np.zeros((3, 8, 8), np.uint8), imagej=imagej, metadata={"axes": "TYX", **metadata}
    )
    assert recorded_frame_interval_s(path) == (pytest.approx(seconds) if seconds else None)
