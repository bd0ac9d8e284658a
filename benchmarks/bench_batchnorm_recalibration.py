"""BatchNorm statistics re-estimated on colour crops after half-grey training (a lead).

A network trained with ``grey_probability`` 0.5 keeps BatchNorm moving statistics averaged
over half-grey batches, while it classifies colour crops only. This benchmark re-estimates
them on 2,000 colour crops of the model's training sources (one pass in training mode with
momentum 0: each BatchNorm layer takes the statistics of that batch; no weight is
trained), once on the plain crops and once on crops through the model's training
augmentation without the grey draw, saves both next to the original
(``*_colour_bn_plain.keras``, ``*_colour_bn_augmented.keras``) and scores the three like
``bench_training_variants.py`` scores PBC-only variants (BCCD is a microscope they never
saw)::

    python benchmarks/bench_batchnorm_recalibration.py runs/variants/pbc_randgrey.keras \
        runs/variants/pbc_randgrey_seed1.keras
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import model_files_arguments, write_result
from bench_training_variants import evaluate

from napari_bloodcell.classification.datasets import load_crop_dataset
from napari_bloodcell.classification.inference import CellClassifier
from napari_bloodcell.classification.model_files import (
    load_keras_model,
    read_metadata,
    save_model,
)

RECALIBRATION_CROPS = 2000


def recalibrate_batchnorm(model: Path, pbc: Path, *, augmented: bool) -> Path:
    """Save ``model`` (trained on ``pbc`` alone) with BatchNorm statistics of colour crops
    of its own training sources, plain or through its training augmentation without the
    grey draw (``augmented``)."""
    import keras

    from napari_bloodcell.classification.training import make_augmenter

    metadata = read_metadata(model)
    training, config = metadata.training, metadata.training["config"]
    if [Path(d).name for d in training["data_dirs"]] != ["pbc"]:
        raise SystemExit(f"{model} was not trained on PBC alone: {training['data_dirs']}")
    dataset = load_crop_dataset([pbc], size=metadata.input_size, scale=metadata.crop_scale)
    held_out = set(training["validation_sources"]) | set(training["test_sources"])
    train_idx = np.flatnonzero([source not in held_out for source in dataset.sources])
    rng = np.random.default_rng(config["seed"])
    chosen = rng.choice(train_idx, min(RECALIBRATION_CROPS, len(train_idx)), replace=False)
    crops = dataset.images[chosen].astype(np.float32) / 255
    if augmented:
        jitters = ("stain_jitter", "max_blur_sigma", "hue_jitter", "lamp_jitter")
        crops = np.asarray(make_augmenter(config["seed"], *(config[k] for k in jitters))(crops))
    network = load_keras_model(model)
    norms = [
        layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # the moving statistics become this batch's
    network(crops, training=True)
    for layer, momentum in zip(norms, momenta, strict=True):
        layer.momentum = momentum
    kind = "augmented" if augmented else "plain"
    out = model.with_name(f"{model.stem}_colour_bn_{kind}.keras")
    note = {
        "batchnorm_recalibrated_on": f"{len(chosen)} {kind} colour training crops",
        "novelty_reference": False,  # fitted on the features before recalibration
    }
    save_model(network, out, replace(metadata, training=training | note))
    return out


def main() -> None:
    _, args = model_files_arguments(
        __doc__.splitlines()[0], "PBC-only models (.keras)", "batchnorm_recalibration"
    )
    results = {}
    for model in args.models:
        recalibrated = [
            recalibrate_batchnorm(model, args.data / "pbc", augmented=augmented)
            for augmented in (False, True)
        ]
        for path in (model, *recalibrated):
            results[path.stem] = evaluate(
                CellClassifier(path), args.data, args.bccd_crops, bccd_unseen=True
            )
            print(path.stem, {k: v.get("accuracy") for k, v in results[path.stem].items()
                              if isinstance(v, dict)})  # fmt: skip
            write_result(args.result, {"models": results})


if __name__ == "__main__":
    main()
