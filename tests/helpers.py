"""Generated test inputs: single-cell images for classifier tests, model copies, a multi-file
OME-TIFF."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage.draw import disk, ellipse

BACKGROUND = np.array([235, 225, 215], dtype=float)
NUCLEUS = np.array([90, 50, 150], dtype=float)
CYTOPLASM = np.array([215, 200, 225], dtype=float)


def draw_cell(kind: str, rng: np.random.Generator, size: int = 72) -> np.ndarray:
    """A single-cell RGB uint8 image: a pale cell with a round ("round") or
    three-lobed ("lobed") purple nucleus, with random position jitter and noise."""
    image = np.ones((size, size, 3)) * BACKGROUND
    cy, cx = size / 2 + rng.uniform(-3, 3, 2)
    image[disk((cy, cx), size * 0.36, shape=(size, size))] = CYTOPLASM
    if kind == "round":
        image[disk((cy, cx), size * 0.2, shape=(size, size))] = NUCLEUS
    else:
        for angle in (0, 2.1, 4.2):
            oy, ox = 0.13 * size * np.sin(angle), 0.13 * size * np.cos(angle)
            rr, cc = ellipse(
                cy + oy, cx + ox, size * 0.08, size * 0.11, shape=(size, size), rotation=angle
            )
            image[rr, cc] = NUCLEUS
        rr, cc = disk((cy, cx), size * 0.05, shape=(size, size))
        image[rr, cc] = NUCLEUS
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_crop_folder(
    root: Path, n_per_class: int, seed: int, n_sources: int | None = None
) -> Path:
    """Class folders ``round/`` and ``lobed/`` of generated single-cell images."""
    rng = np.random.default_rng(seed)
    for kind in ("round", "lobed"):
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            name = f"{kind}{i % n_sources}__{i}.png" if n_sources else f"{kind}{i}.png"
            iio.imwrite(folder / name, draw_cell(kind, rng))
    return root


def running_children() -> list[multiprocessing.Process]:
    """This process's multiprocessing children that still exist (see :func:`exists`)."""
    return [child for child in multiprocessing.active_children() if exists(child)]


def exists(process: multiprocessing.Process) -> bool:
    """Whether the operating system still has ``process`` (a zombie counts).

    A child's ``exitcode`` (and ``multiprocessing.active_children()``) can stay unset for
    ever when something other than its ``Process`` object reaped it; the operating
    system's answer does not depend on who reaped it.
    """
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def model_copy(model: Path, folder: Path, **changes) -> Path:
    """``folder/copy.keras``: a copy of a model file (replacing an earlier copy) with
    metadata fields changed."""
    import shutil

    from napari_bloodcell.classification.model_files import read_metadata, update_metadata

    copy = Path(shutil.copy(model, folder / "copy.keras"))
    metadata = read_metadata(copy)
    for name, value in changes.items():
        setattr(metadata, name, value)
    update_metadata(copy, metadata)
    return copy


OME_NS = 'xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"'


def write_ome_set(folder, frames, binary_only: bool) -> list:
    """Micro-Manager's multi-file OME-TIFF: ``exp_MMStack.ome.tif`` with the first half of
    ``frames`` (T, Y, X) and the metadata of all, ``exp_MMStack_1.ome.tif`` with the
    rest and a ``BinaryOnly`` pointer to the first (or, ``binary_only=False``, the whole
    metadata again, as some writers do)."""
    import uuid

    import tifffile

    n, height, width = frames.shape
    names = ["exp_MMStack.ome.tif", "exp_MMStack_1.ome.tif"]
    uuids = [f"urn:uuid:{uuid.uuid4()}" for _ in names]
    half = n // 2
    planes = "".join(
        f'<TiffData FirstT="{t}" FirstC="0" FirstZ="0" IFD="{t % half}" PlaneCount="1">'
        f'<UUID FileName="{names[t >= half]}">{uuids[t >= half]}</UUID></TiffData>'
        for t in range(n)
    )
    pixels = (
        f'<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" '
        f'SizeX="{width}" SizeY="{height}" SizeC="1" SizeZ="1" SizeT="{n}">'
        f'<Channel ID="Channel:0:0" SamplesPerPixel="1"/>{planes}</Pixels></Image>'
    )
    whole = [f'<?xml version="1.0"?><OME {OME_NS} UUID="{u}">{pixels}</OME>' for u in uuids]
    pointer = (
        f'<?xml version="1.0"?><OME {OME_NS} UUID="{uuids[1]}">'
        f'<BinaryOnly MetadataFile="{names[0]}" UUID="{uuids[0]}"/></OME>'
    )
    descriptions = [whole[0], pointer if binary_only else whole[1]]
    for part, (name, description) in enumerate(zip(names, descriptions, strict=True)):
        with tifffile.TiffWriter(folder / name) as writer:
            for i, frame in enumerate(frames[part * half : (part + 1) * half]):
                writer.write(frame, description=description if i == 0 else None, metadata=None)
    return [folder / name for name in names]
