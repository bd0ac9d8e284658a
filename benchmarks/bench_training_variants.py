"""Train classifier variants on the same data and split, and score each on unseen data.

Issue 3 asks which choices generalise to other microscopes: normalisation layers
(BatchNorm vs GroupNorm), stain/blur augmentation, architecture. Every variant is
trained by ``train_classifier`` on the same folders with the same seed (hence the same
split by source image) and scored like ``bench_classifier.py``: PBC and BCCD test
splits, and the two Zheng 2018 microscopes never trained on.

Usage (one variant takes ~15-20 min on 2 cores)::

    python scripts/cut_bccd_training_crops.py ../shared/data/bccd runs/bccd_crops
    python benchmarks/bench_training_variants.py --variants bn_aug gn_aug
    python benchmarks/bench_training_variants.py --variants default coursework_short \
        --result seed_vs_compact

``default`` is the packaged model, scored without training (it was trained by
``train`` on the same folders, seed and split: compare it with ``coursework_short``).

Variants named ``pbc_*`` are trained on PBC alone, so that BCCD is a microscope they
never saw: they are also scored on all BCCD windows (``bccd_all_windows``), which
chooses between domain-generalisation recipes without looking at Zheng 2018::

    python benchmarks/bench_training_variants.py --variants pbc_base pbc_lamp pbc_mixstyle \
        pbc_grey --result unseen_microscope
    python benchmarks/bench_training_variants.py --variants pbc_randgrey_long \
        --result unseen_microscope_randgrey_long

``--seed N`` trains with another seed (another split and initialisation): the models are
``runs/variants/NAME_seedN.keras``, the results keyed ``NAME_seedN``. Two seeds of one
variant show how far one run of a recipe is from the next.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, replace
from pathlib import Path

from _common import DEFAULT_DATA, require, write_result
from bench_classifier import TARGET_CLASSES, score, test_split_files, zheng_files

from napari_bloodcell.classification.inference import CellClassifier
from napari_bloodcell.classification.model_files import resolve_model_path
from napari_bloodcell.classification.training import TrainingConfig, train_classifier

VARIANTS = {
    "default": None,  # the packaged default model (compact), evaluated as it is
    "bn": TrainingConfig(),
    "bn_aug": TrainingConfig(stain_jitter=0.15, max_blur_sigma=1.5),
    "gn_aug": TrainingConfig(normalization="group", stain_jitter=0.15, max_blur_sigma=1.5),
    "bn_hue": TrainingConfig(stain_jitter=0.15, hue_jitter=0.15),
    "coursework_short": TrainingConfig(architecture="coursework", epochs=4, learning_rate=1e-4),
    # the default model's recipe (its recorded training config), colour-blind
    "grey": TrainingConfig(
        epochs=60, patience=10, lr_patience=4, stain_jitter=0.1, max_blur_sigma=1.0, grey_input=True
    ),
    **{
        f"pbc_{name}": TrainingConfig(
            input_size=80,
            patience=6,
            lr_patience=3,
            stain_jitter=0.1,
            max_blur_sigma=1.0,
            test_time_views=1,
            **change,
        )
        for name, change in (
            ("base", {}),
            ("lamp", {"lamp_jitter": 0.3}),
            ("mixstyle", {"mixstyle": 0.5}),
            ("grey", {"grey_input": True}),
            ("randgrey", {"grey_probability": 0.5}),
        )
    },
}
# half-grey training with the default model's slower schedule (a lead of session 6)
VARIANTS["pbc_randgrey_long"] = replace(
    VARIANTS["pbc_randgrey"], epochs=60, patience=10, lr_patience=4
)
PBC_ONLY_PREFIX = "pbc_"


def evaluate(classifier, data: Path, bccd_crops: Path, *, bccd_unseen: bool) -> dict:
    """Scores of ``classifier`` (a :class:`CellClassifier` or anything with its ``metadata``,
    ``classes``, ``input_size``, ``crop_scale`` and ``predict``) on its PBC test split, BCCD
    (its test frames, or all windows when ``bccd_unseen``) and Zheng 2018."""
    test_sources = set(classifier.metadata.training["test_sources"])
    files, truth = test_split_files(data / "pbc", test_sources, classifier.classes)
    six = [(f, c) for f, c in zip(files, truth, strict=True) if c in TARGET_CLASSES]
    result = {"pbc_test_six_classes": score(classifier, *map(list, zip(*six, strict=True)))}
    if bccd_unseen:
        files, truth = test_split_files(bccd_crops, None, classifier.classes)
        result["bccd_all_windows"] = score(classifier, files, truth)
        wbc = [(f, c) for f, c in zip(files, truth, strict=True) if c != "platelet"]
        result["bccd_all_wbc_windows"] = score(classifier, *map(list, zip(*wbc, strict=True)))
    else:
        files, truth = test_split_files(bccd_crops, test_sources, classifier.classes)
        result["bccd_test_frames"] = score(classifier, files, truth)
    zheng = zheng_files(data / "wbc_seg_zheng2018", classifier.classes)
    for name, files, truth in zip(("zheng_dataset1", "zheng_dataset2"), *zheng, strict=True):
        result[name] = score(classifier, files, truth)
    return {
        key: {k: metrics[k] for k in ("n", "accuracy", "macro_f1")}
        | {"recall": {c: m["recall"] for c, m in metrics["per_class"].items()}}
        for key, metrics in result.items()
    } | {
        "neutrophil_precision_pbc": result["pbc_test_six_classes"]["per_class"]["neutrophil"][
            "precision"
        ]
    }


def check_reused(model: Path, config: TrainingConfig) -> None:
    """Refuse a model file of an earlier run whose recorded settings differ from the
    variant's (a setting it does not record did not exist then: its default applied)."""
    recorded = CellClassifier(model).metadata.training["config"]
    wanted = asdict(config.resolved())
    differing = {k: (v, wanted[k]) for k, v in recorded.items() if k in wanted and wanted[k] != v}
    if differing:
        raise SystemExit(f"{model} was trained with other settings {differing}: delete it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["bn_aug"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--bccd-crops", type=Path, default=Path("runs/bccd_crops"))
    parser.add_argument("--workdir", type=Path, default=Path("runs/variants"))
    parser.add_argument("--result", default="training_variants", help="results file name")
    parser.add_argument("--seed", type=int, help="train with this seed instead of 0")
    args = parser.parse_args()
    if args.seed is not None and None in (VARIANTS[v] for v in args.variants):
        parser.error("--seed retrains: the packaged default cannot take it")
    require(args.data / "pbc")
    require(args.bccd_crops)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for variant in args.variants:
        config, name = VARIANTS[variant], variant
        if args.seed is not None and config is not None:
            config, name = replace(config, seed=args.seed), f"{variant}_seed{args.seed}"
        model = args.workdir / f"{name}.keras"
        if config is None:
            model = resolve_model_path(name)
            seconds = None
        elif not model.exists():
            folders = [args.data / "pbc"]
            if not name.startswith(PBC_ONLY_PREFIX):
                folders.append(args.bccd_crops)
            trained = train_classifier(folders, model, config)
            seconds = trained.seconds
        else:
            check_reused(model, config)
            seconds = None
        training = CellClassifier(model).metadata.training
        results[name] = {
            "config": training["config"],
            "epochs_run": training["epochs_run"],
            "best_validation_loss": training["best_val_loss"],
            "training_seconds": seconds or training.get("seconds"),  # recorded since session 6
            "model_bytes": model.stat().st_size,
            **evaluate(
                CellClassifier(model),
                args.data,
                args.bccd_crops,
                bccd_unseen=name.startswith(PBC_ONLY_PREFIX),
            ),
        }
        print(name, {k: v for k, v in results[name].items() if k != "config"})
        write_result(args.result, {"variants": results})


if __name__ == "__main__":
    main()
