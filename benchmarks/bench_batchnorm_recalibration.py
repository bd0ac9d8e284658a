"""BatchNorm statistics re-estimated on colour crops after half-grey training (a lead).

A network trained with ``grey_probability`` 0.5 keeps BatchNorm moving statistics averaged
over half-grey batches, while it classifies colour crops only. This benchmark re-estimates
them on colour training crops (one pass in training mode with momentum 0: each BatchNorm
layer takes the statistics of that batch; no weight is trained), saves the model next to
the original (``*_colour_bn.keras``) and scores both like ``bench_training_variants.py``
scores PBC-only variants (BCCD is a microscope they never saw)::

    python benchmarks/bench_batchnorm_recalibration.py runs/variants/pbc_randgrey.keras \
        runs/variants/pbc_randgrey_seed1.keras
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import DEFAULT_DATA, require, write_result
from bench_training_variants import evaluate

from napari_bloodcell.classification.datasets import load_crop_dataset, split_by_source
from napari_bloodcell.classification.model_files import (
    load_keras_model,
    read_metadata,
    save_model,
)

RECALIBRATION_CROPS = 2000


def recalibrate_batchnorm(model: Path, pbc: Path) -> Path:
    """Save ``model`` (trained on ``pbc`` alone) with BatchNorm statistics of colour crops
    from its own training split (the split is redrawn from its recorded seed)."""
    import keras

    metadata = read_metadata(model)
    config = metadata.training["config"]
    dataset = load_crop_dataset([pbc], size=metadata.input_size, scale=metadata.crop_scale)
    train_idx, _, _ = split_by_source(
        dataset, (config["validation_fraction"], config["test_fraction"]), config["seed"]
    )
    rng = np.random.default_rng(config["seed"])
    chosen = rng.choice(train_idx, min(RECALIBRATION_CROPS, len(train_idx)), replace=False)
    network = load_keras_model(model)
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    network(dataset.images[chosen].astype(np.float32) / 255, training=True)
    out = model.with_name(f"{model.stem}_colour_bn.keras")
    note = {"batchnorm_recalibrated_on": f"{len(chosen)} colour training crops"}
    save_model(network, out, replace(metadata, training=metadata.training | note))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="PBC-only models (.keras)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--bccd-crops", type=Path, default=Path("runs/bccd_crops"))
    parser.add_argument("--result", default="batchnorm_recalibration")
    args = parser.parse_args()
    require(args.data / "pbc")
    require(args.bccd_crops)
    results = {}
    for model in args.models:
        recalibrated = recalibrate_batchnorm(model, args.data / "pbc")
        for path in (model, recalibrated):
            results[path.stem] = evaluate(path, args.data, args.bccd_crops, bccd_unseen=True)
            print(path.stem, {k: v.get("accuracy") for k, v in results[path.stem].items()
                              if isinstance(v, dict)})  # fmt: skip
            write_result(args.result, {"models": results})


if __name__ == "__main__":
    main()
