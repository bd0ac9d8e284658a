"""Files of a batch run: label stacks too large for classic TIFF offsets."""

import numpy as np
import tifffile

from napari_bloodcell import batch


def test_large_label_stacks_are_written_as_bigtiff(tmp_path, monkeypatch):
    frames = np.arange(3 * 16 * 20, dtype=np.uint32).reshape(3, 16, 20)
    small = batch.write_label_stack(tmp_path / "small.tif", iter(frames), n_frames=3,
                                    frame_shape=(16, 20))  # fmt: skip
    monkeypatch.setattr(batch, "BIGTIFF_FROM_BYTES", frames.nbytes)  # as if it were 4 GiB
    large = batch.write_label_stack(tmp_path / "large.tif", iter(frames), n_frames=3,
                                    frame_shape=(16, 20))  # fmt: skip
    with tifffile.TiffFile(small) as tif:
        assert not tif.is_bigtiff
    with tifffile.TiffFile(large) as tif:
        assert tif.is_bigtiff
        np.testing.assert_array_equal(tif.asarray(), frames)
