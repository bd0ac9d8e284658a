"""The npe2 manifest is found from the installed distribution and its sample data work."""

import numpy as np


def test_manifest_is_discovered_from_the_distribution():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-bloodcell")
    assert manifest.name == "napari-bloodcell"
    keys = {sample.key for sample in manifest.contributions.sample_data}
    assert keys == {"synthetic_smear", "synthetic_timelapse"}


def test_sample_data_are_layer_data_tuples_with_ground_truth():
    from napari_bloodcell._napari.sample_data import synthetic_smear, synthetic_timelapse

    (image, image_meta, image_type), (labels, labels_meta, labels_type) = synthetic_smear()
    assert image_type == "image" and image_meta["rgb"] and image.shape[-1] == 3
    assert labels_type == "labels" and labels.shape == image.shape[:2]
    assert set(labels_meta["features"]["index"]) == set(np.unique(labels)) - {0}
    (movie, _, _), (movie_labels, _, _) = synthetic_timelapse()
    assert movie.ndim == 4 and movie_labels.shape == movie.shape[:3]
