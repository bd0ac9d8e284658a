"""The bad-input corpus through the Python API and the command line (see docs/robustness.md)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_bloodcell.cli import main
from napari_bloodcell.errors import BloodcellError, InputImageError
from napari_bloodcell.reading import (
    MAX_FRAME_PIXELS_ENV,
    image_from_array,
    open_lazy,
    read_image,
)

from .corpus import CASES, Case, smear_rgb, write_corpus

BAD = [case for case in CASES if case.expect is not None]
GOOD = [case for case in CASES if case.expect is None]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_the_api_refuses_each_bad_file_with_an_input_image_error(corpus, case: Case):
    path = corpus[case.name]
    with pytest.raises(InputImageError, match=re.escape(case.expect)) as eager:
        read_image(path, axes=case.axes)
    with pytest.raises(InputImageError, match=re.escape(case.expect)) as lazy:
        open_lazy(path, axes=case.axes).data.compute(scheduler="sync")
    for error in (eager.value, lazy.value):
        assert str(path) in str(error) and "\n" not in str(error)


@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_the_api_reads_each_awkward_but_valid_file(corpus, case: Case):
    image = read_image(corpus[case.name], axes=case.axes)
    assert image.data.dtype == np.float32 and image.data.shape[1:3] == smear_rgb().shape[:2]
    assert 0.0 <= image.data.min() < image.data.max() <= 1.0


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_the_cli_refuses_each_bad_file_with_one_line_and_writes_nothing(
    tmp_path, corpus, case: Case, capsys
):
    path, out = corpus[case.name], tmp_path / "out"
    axes = ["--axes", case.axes] if case.axes else []
    assert main(["analyze", str(path), "--out", str(out), "--no-classify", *axes]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("napari-bloodcell: error: ")
    assert path.name in err and case.expect in err
    assert _files_under(out) == []


@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_the_cli_analyses_each_awkward_but_valid_file(tmp_path, corpus, case: Case):
    path, out = corpus[case.name], tmp_path / "résultats ü 血"
    axes = ["--axes", case.axes] if case.axes else []
    assert main(["analyze", str(path), "--out", str(out), "--no-classify", *axes]) == 0
    labels = tifffile.imread(out / "labels" / f"{path.stem}.tif")
    assert labels.shape == smear_rgb().shape[:2] and labels.dtype == np.uint32
    table = pd.read_csv(out / "cells.csv")
    assert set(table["source"]) <= {path.name}
    assert set(np.unique(labels)) - {0} == set(table["label"])


def test_the_pixel_budget_is_configurable_and_checked_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "smear.tif"
    tifffile.imwrite(path, smear_rgb())
    monkeypatch.setenv(MAX_FRAME_PIXELS_ENV, "10000")
    for read in (read_image, open_lazy):
        with pytest.raises(InputImageError, match=f"pixel budget.*{MAX_FRAME_PIXELS_ENV}"):
            read(path)
    with pytest.raises(InputImageError, match="pixel budget"):
        image_from_array(np.zeros((120, 100), np.uint8))
    monkeypatch.setenv(MAX_FRAME_PIXELS_ENV, "lots")
    with pytest.raises(BloodcellError, match="positive whole number"):
        read_image(path)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no one may write in: a read-only tmpfs as root, else a chmod 555 folder."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)]
    mounted = os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0
    if not mounted:
        folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK) and not mounted:
            pytest.skip("cannot make a read-only folder here")
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_read_only_output_folder_is_one_clear_error(read_only_folder, corpus, capsys):
    path = corpus["unicode and spaces in the path"]
    assert main(["analyze", str(path), "--out", str(read_only_folder), "--no-classify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write results there" in err
    assert str(read_only_folder) in err and "Traceback" not in err
