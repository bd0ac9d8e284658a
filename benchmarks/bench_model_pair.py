"""Two models as one classifier: their calibrated probabilities averaged (issue 3).

A colour network knows its own microscope best; a colour-blind one (``grey_input``)
recognises twice as many white cells of a microscope it never saw, at a cost on its own
(``docs/benchmarks.md``, *How much of the gap is colour*). This benchmark scores the
average of the two networks' calibrated probabilities, each with its own views and
temperature, with no training: pairs of models trained on the same folders with the same
seed (hence the same split), scored like ``bench_training_variants.py`` scores them
(PBC-only pairs also on all BCCD windows, a microscope neither saw)::

    python benchmarks/bench_model_pair.py runs/variants/pbc_base.keras \
        runs/variants/pbc_grey.keras runs/variants/pbc_base_seed1.keras \
        runs/variants/pbc_grey_seed1.keras
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _common import model_files_arguments, write_result
from bench_training_variants import PBC_ONLY_PREFIX, evaluate

from napari_bloodcell.classification.calibration import calibration_record
from napari_bloodcell.classification.datasets import (
    find_labelled_files,
    prepare_crop_files,
    source_id,
)
from napari_bloodcell.classification.inference import CellClassifier, apply_temperature


class AveragedClassifier:
    """The mean of two classifiers' calibrated probabilities; features of the first.

    Both must share classes, input size, crop scale and their split (the PBC test
    sources are read from the first one's metadata)."""

    novelty_reference = None

    def __init__(self, first: Path, second: Path):
        self.members = CellClassifier(first), CellClassifier(second)
        self.metadata = self.members[0].metadata
        shared = ("classes", "input_size", "crop_scale")
        differing = [k for k in shared if getattr(self.members[1].metadata, k) != getattr(
            self.metadata, k)]  # fmt: skip
        split = [self.members[1].metadata.training[k] == self.metadata.training[k]
                 for k in ("validation_sources", "test_sources")]  # fmt: skip
        if differing or not all(split):
            raise SystemExit(f"{first} and {second} differ in {differing or 'their split'}")
        self.classes, self.input_size = self.metadata.classes, self.metadata.input_size
        self.crop_scale = self.metadata.crop_scale

    def predict(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (first, features), (second, _) = (member.predict(crops) for member in self.members)
        return (first + second) / 2, features


def mean_nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    true = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(true, 1e-12, 1))))


def validation_scores(pair: AveragedClassifier, folders: list[Path]) -> dict:
    """Pooled validation NLL and accuracy (the items of the pair's ``validation_sources``
    in ``folders``) of the pair and of its first member alone, each as stored and after
    refitting one temperature on these probabilities (as ``calibrate`` would)."""
    validation = set(pair.metadata.training["validation_sources"])
    found, _ = find_labelled_files(folders, pair.classes, ignore_unknown=True)
    items = [
        (f, c, domain) for f, c, domain in found if source_id(f, folders[domain]) in validation
    ]
    files, classes, domains = zip(*items, strict=True)
    crops = prepare_crop_files(files, size=pair.input_size, scale=pair.crop_scale) / 255
    labels = np.array([pair.classes.index(c) for c in classes])
    first_folder = np.array(domains) == 0
    scores = {"n": len(labels), f"n_{folders[0].name}": int(first_folder.sum())}
    for name, probabilities in (
        ("pair", pair.predict(crops)[0]),
        ("first_alone", pair.members[0].predict(crops)[0]),
    ):
        refitted = calibration_record(probabilities, labels)
        right = probabilities.argmax(axis=1) == labels
        scores[name] = {
            "nll": mean_nll(probabilities, labels),
            "accuracy": float(right.mean()),
            f"accuracy_{folders[0].name}": float(right[first_folder].mean()),
            "refitted_temperature": refitted["temperature"],
            "nll_after_refit": mean_nll(
                apply_temperature(probabilities, refitted["temperature"]), labels
            ),
        }
    return scores


def main() -> None:
    parser, args = model_files_arguments(
        __doc__.splitlines()[0], "pairs of models (.keras)", "model_pairs"
    )
    if len(args.models) % 2:
        parser.error("give the models in pairs")
    results = {}
    for first, second in zip(args.models[::2], args.models[1::2], strict=True):
        name = f"{first.stem}+{second.stem}"
        unseen = first.stem.startswith(PBC_ONLY_PREFIX)
        pair = AveragedClassifier(first, second)
        folders = [args.data / "pbc"] + ([] if unseen else [args.bccd_crops])
        results[name] = {
            "validation": validation_scores(pair, folders),
            **evaluate(pair, args.data, args.bccd_crops, bccd_unseen=unseen),
        }
        print(name, {k: v.get("accuracy") for k, v in results[name].items()
                     if isinstance(v, dict)})  # fmt: skip
        write_result(args.result, {"pairs": results})


if __name__ == "__main__":
    main()
