"""Model files: a Keras ``.keras`` archive with napari-bloodcell metadata inside.

The metadata (classes, input size, crop scale, training split, calibration and
the "uncertain" threshold) travels in the same zip archive as an extra member
``napari_bloodcell.json`` (and the novelty reference, :mod:`.novelty`, as
``napari_bloodcell_novelty.npz``), so a model is always one file. Keras ignores the
extra member; models load with Keras' safe mode on, and only when their network
config names built-in Keras objects alone (no Lambda layers, no custom objects).
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ..classes import UNCERTAIN
from ..errors import ModelError, OutputExistsError
from .novelty import NoveltyReference

METADATA_MEMBER = "napari_bloodcell.json"
NOVELTY_MEMBER = "napari_bloodcell_novelty.npz"
CONFIG_MEMBER = "config.json"
CODE_OBJECTS = {"Lambda": "Lambda layer", "TFOpLambda": "TFOpLambda layer", "__lambda__": "lambda"}
"""Keras objects that carry Python code (marshalled bytecode) in their config."""
FUNCTION_MODULES = (
    "keras.activations",
    "keras.constraints",
    "keras.initializers",
    "keras.losses",
    "keras.metrics",
    "keras.regularizers",
)
"""Modules whose functions a network config may name: any other Keras function (e.g.
``keras.utils.get_file``, ``keras.config.enable_unsafe_deserialization``) would be called."""
DEFAULT_MODEL_NAME = "default"
FORMAT_VERSION = 1
TEST_TIME_VIEWS = (1, 2, 4, 8)
"""Allowed numbers of rotated/flipped views averaged per crop."""


def checked_views(views: int) -> int:
    """``views`` if it is one of :data:`TEST_TIME_VIEWS`, else :class:`ModelError`."""
    if isinstance(views, bool) or not isinstance(views, int) or views not in TEST_TIME_VIEWS:
        raise ModelError(f"test-time views must be one of {TEST_TIME_VIEWS}, not {views!r}")
    return views


@dataclass
class ModelMetadata:
    """What a model needs to be used correctly, stored inside its ``.keras`` file.

    classes : class names, in softmax order (lower case).
    input_size : side of the square RGB input crop, pixels.
    crop_scale : crop side / stained cell diameter used to cut training crops.
    architecture : ``"compact"`` or ``"coursework"``.
    temperature : softmax temperature from calibration (1.0 = uncalibrated).
    uncertain_threshold : below this confidence the answer is ``"uncertain"``.
    test_time_views : how many rotated/flipped views of each crop are classified and their
        probabilities averaged (1, 2, 4 or 8; see :func:`.inference.dihedral_views`).
    version : model version string.
    training : free-form record of the training run (data, split seed, epochs, metrics).
    """

    classes: list[str]
    input_size: int
    crop_scale: float
    architecture: str
    temperature: float = 1.0
    uncertain_threshold: float = 0.5
    test_time_views: int = 1
    version: str = "0"
    training: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def check_model_file_name(path: Path) -> None:
    """Refuse (:class:`ModelError`) a model file name without the ``.keras`` suffix."""
    if Path(path).suffix != ".keras":
        raise ModelError(f"{path}: model files must end in .keras")


def save_model(
    model, path: str | Path, metadata: ModelMetadata, novelty: NoveltyReference | None = None
) -> Path:
    """Save a Keras model, its metadata and novelty reference to one ``.keras`` file
    (written atomically).

    The optimizer state is left out (a third of the size of an Adam-trained file);
    fine-tuning starts a fresh optimizer anyway.
    """
    path = Path(path)
    check_model_file_name(path)
    check_metadata(metadata)
    if getattr(model, "optimizer", None) is not None:
        model = _without_optimizer(model)
    tmp = path.with_name(f".{path.name}.tmp.keras")
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(METADATA_MEMBER, json.dumps(asdict(metadata), indent=2))
            if novelty is not None:
                archive.writestr(NOVELTY_MEMBER, novelty.to_bytes())
        tmp.replace(path)
    finally:  # a full disk or a failed write leaves no half-written file behind
        tmp.unlink(missing_ok=True)
    return path


def _without_optimizer(model):
    """An uncompiled copy of a functional model (``clone_model`` would keep the optimizer)."""
    import keras

    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


KEEP = "keep"
"""``update_metadata(novelty=KEEP)``: leave the model's novelty reference as it is."""


def update_metadata(
    path: str | Path, metadata: ModelMetadata, novelty: NoveltyReference | None | str = KEEP
) -> Path:
    """Replace the metadata inside a model file, and the novelty reference unless ``KEEP``
    (None removes it); the network is copied unchanged, atomically. The packaged models
    are refused: they are the package's, shared by every user of the installation."""
    path = Path(path)
    check_not_packaged(path)
    check_metadata(metadata)
    if not (novelty is KEEP or novelty is None or isinstance(novelty, NoveltyReference)):
        raise ModelError(f"novelty must be a NoveltyReference, None or KEEP, not {novelty!r}")
    replaced = {METADATA_MEMBER: json.dumps(asdict(metadata), indent=2).encode()}
    if novelty is not KEEP and novelty is not None:
        replaced[NOVELTY_MEMBER] = novelty.to_bytes()
    dropped = set(replaced) | ({NOVELTY_MEMBER} if novelty is not KEEP else set())
    tmp = path.with_name(f".{path.name}.tmp.keras")
    try:
        with (
            zipfile.ZipFile(path) as source,
            zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target,
        ):
            for item in source.infolist():
                if item.filename not in dropped:
                    target.writestr(item, source.read(item.filename))
            for name, data in replaced.items():
                target.writestr(name, data)
        tmp.replace(path)
    finally:  # as in save_model
        tmp.unlink(missing_ok=True)
    return path


DAMAGED_MEMBER_ERRORS = (
    OSError,
    EOFError,  # a member cut short
    zlib.error,  # compressed bytes damaged (calibrate writes compressed members)
    zipfile.BadZipFile,  # including a member whose CRC does not match
    NotImplementedError,  # a compression method zipfile does not know
    ValueError,  # JSON that is not JSON (JSONDecodeError), text that is not UTF-8
    RecursionError,  # JSON nested beyond Python's limit
)
"""What reading and parsing a member of a damaged model archive raises."""


def read_novelty_reference(path: str | Path) -> NoveltyReference | None:
    """The novelty reference stored in a model file, or None for a model without one."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(NOVELTY_MEMBER)
    except KeyError:
        return None
    except DAMAGED_MEMBER_ERRORS as exc:
        raise ModelError(f"{path}: not a Keras .keras model file ({exc})") from None
    try:
        return NoveltyReference.from_bytes(data)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None


def read_metadata(path: str | Path) -> ModelMetadata:
    """Read only the metadata of a model file (fast, no TensorFlow)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        with zipfile.ZipFile(path) as archive:
            raw = json.loads(archive.read(METADATA_MEMBER))
    except zipfile.BadZipFile:
        raise ModelError(f"{path}: not a Keras .keras model file (not a zip archive)") from None
    except KeyError:
        raise ModelError(
            f"{path}: a Keras file without napari-bloodcell metadata (classes, input size); "
            f"train it with `napari-bloodcell train`"
        ) from None
    except DAMAGED_MEMBER_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise ModelError(f"{path}: unreadable model metadata ({reason})") from None
    try:
        metadata = ModelMetadata(**raw)
        check_metadata(metadata)
    except (TypeError, ModelError) as exc:
        raise ModelError(f"{path}: incompatible model metadata ({exc})") from None
    return metadata


def check_metadata(metadata: ModelMetadata) -> None:
    """Refuse (:class:`ModelError`) metadata no classifier can work with (a threshold of
    1.5 broke the widgets' threshold field; a temperature of 0 made every cell uncertain)."""

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    classes = metadata.classes
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ModelError(f"classes must be distinct non-empty names, got {classes!r}")
    if UNCERTAIN in classes:
        raise ModelError(
            f"{UNCERTAIN!r} cannot be a class: it is the answer below the threshold (train the "
            f"model again with that class folder renamed, e.g. unclassified)"
        )
    if any(c != c.lower() for c in classes):
        raise ModelError(
            f"class names must be lower case (class folders are matched by their lower-case "
            f"name), got {classes!r}"
        )
    version = metadata.format_version
    if not (isinstance(version, int) and 1 <= version <= FORMAT_VERSION):
        raise ModelError(
            f"format_version {version!r} is not one this napari-bloodcell reads (1 to "
            f"{FORMAT_VERSION}); a newer napari-bloodcell may read it"
        )
    if not isinstance(metadata.training, dict):
        raise ModelError(f"training must be a record (a JSON object), got {metadata.training!r}")
    if not (isinstance(metadata.input_size, int) and metadata.input_size > 0):
        raise ModelError(f"input_size must be a positive integer, got {metadata.input_size!r}")
    for name in ("crop_scale", "temperature"):
        value = getattr(metadata, name)
        if not (number(value) and math.isfinite(value) and value > 0):
            raise ModelError(f"{name} must be a positive number, got {value!r}")
    threshold = metadata.uncertain_threshold
    if not (number(threshold) and 0 <= threshold <= 1):
        raise ModelError(f"uncertain_threshold must be a probability in [0, 1], got {threshold!r}")
    checked_views(metadata.test_time_views)


def load_keras_model(path: str | Path):
    """Load the Keras model of a model file with safe mode on (no custom code)."""
    import keras

    path = Path(path)
    refuse_custom_code(path)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a damaged or foreign file
        raise ModelError(f"{path}: the Keras model cannot be loaded ({exc})") from None


def check_network_shape(model, path: Path, metadata: ModelMetadata) -> None:
    """Refuse (:class:`ModelError`) a network whose input or output does not match its
    file's metadata (RGB crops of ``input_size`` px in, one probability per class out), or
    whose last layer is no softmax (raw scores were written as "probabilities" above 1)."""
    expected = (None, metadata.input_size, metadata.input_size, 3)
    if tuple(model.input_shape) != expected or model.output_shape[-1] != len(metadata.classes):
        raise ModelError(
            f"{path}: network shape {model.input_shape} → {model.output_shape} does not "
            f"match its metadata ({metadata.input_size} px input, {len(metadata.classes)} "
            f"classes)"
        )
    if not _ends_in_softmax(model):
        raise ModelError(
            f"{path}: its last layer ({model.layers[-1].name!r}) gives no class probabilities: "
            f"end the network with a softmax (e.g. Dense(n_classes, activation='softmax'))"
        )


def _ends_in_softmax(model) -> bool:
    """Whether the last layer is a Softmax layer or one with the softmax activation."""
    import keras

    head = model.layers[-1]
    activation = getattr(head, "activation", None)
    return isinstance(head, keras.layers.Softmax) or (
        getattr(activation, "__name__", None) == "softmax"
    )


def refuse_custom_code(path: Path) -> None:
    """Raise :class:`ModelError` unless the network config of ``path`` names only built-in
    Keras objects: Lambda layers and custom (registered or not) objects run code."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read(CONFIG_MEMBER))
    except (KeyError, *DAMAGED_MEMBER_ERRORS) as exc:
        raise ModelError(f"{path}: not a Keras .keras model file ({exc})") from None
    custom = sorted(set(_custom_objects(config)))
    if custom:
        raise ModelError(
            f"{path}: the network needs custom code ({', '.join(custom)}); models are loaded "
            f"in Keras safe mode with built-in layers only: rebuild it without Lambda layers "
            f"or custom objects"
        )


def _custom_objects(node) -> Iterator[str]:
    """Names of the objects in a Keras config that are code, live outside Keras, or are
    Keras functions outside :data:`FUNCTION_MODULES`."""
    if isinstance(node, dict):
        name, module = node.get("class_name"), node.get("module")
        if name in CODE_OBJECTS:
            yield CODE_OBJECTS[name]
            return
        if isinstance(name, str) and module is not None and module.split(".")[0] != "keras":
            yield f"{node.get('registered_name') or name} from module {module}"
        elif name == "function" and module not in FUNCTION_MODULES:
            yield f"function {node.get('config')!r} from module {module}"
        for value in node.values():
            yield from _custom_objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _custom_objects(value)


def packaged_models_dir() -> Path:
    return Path(str(resources.files("napari_bloodcell.classification") / "models"))


def check_not_packaged(path: Path) -> None:
    """Refuse (:class:`ModelError`) to change a model packaged with napari-bloodcell."""
    if Path(path).resolve().parent == packaged_models_dir().resolve():
        raise ModelError(
            f"{path} is a model packaged with napari-bloodcell and is not changed in place; "
            f"copy it (e.g. to mine.keras) and change the copy"
        )


def resolve_model_path(model: str | Path) -> Path:
    """Turn ``"default"``, a user model name or a path into a model file path (absolute:
    a run's units and its Dask workers, in other working folders, load the same file)."""
    if str(model) == DEFAULT_MODEL_NAME:
        path = packaged_models_dir() / f"{DEFAULT_MODEL_NAME}.keras"
        if not path.is_file():
            raise ModelError(
                f"the packaged default model is missing ({path}); reinstall the package"
            )
        return path
    path = Path(model)
    if path.is_file():
        return path.absolute()
    user_path = user_models_dir() / f"{model}.keras"
    if user_path.is_file():
        return user_path
    raise ModelError(
        f"model {str(model)!r} not found: expected 'default', a path to a .keras file, or the "
        f"name of a model in {user_models_dir()}"
    )


def user_models_dir() -> Path:
    """The per-user folder where fine-tuned models are kept (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-bloodcell")) / "models"


def list_models() -> dict[str, Path]:
    """Models available by name: ``"default"`` (packaged) and every user model, sorted."""
    models = {DEFAULT_MODEL_NAME: packaged_models_dir() / f"{DEFAULT_MODEL_NAME}.keras"}
    folder = user_models_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.keras")):
            if not path.name.startswith(".") and path.stem != DEFAULT_MODEL_NAME:
                models[path.stem] = path
    return models


MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_model_name(name: str, models_dir: Path | None = None, overwrite: bool = False) -> Path:
    """The file a user model called ``name`` is saved to (in ``models_dir``, default the
    per-user folder), or a :class:`ModelError` / :class:`OutputExistsError` for an
    unusable or taken name."""
    if not MODEL_NAME_PATTERN.fullmatch(name) or name.lower().endswith(".keras"):
        raise ModelError(
            f"invalid model name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            f"starting with a letter or digit (the name, without .keras)"
        )
    if name == DEFAULT_MODEL_NAME:
        raise ModelError(f"{DEFAULT_MODEL_NAME!r} is the packaged model; choose another name")
    target = (models_dir or user_models_dir()) / f"{name}.keras"
    if target.exists() and not overwrite:
        raise OutputExistsError(f"a model named {name!r} already exists ({target})")
    return target


def install_model(model_path: Path, target: Path, overwrite: bool = False) -> Path:
    """Move a freshly trained model file and its learning curves (``<stem>_history.csv`` and
    ``.png``) to ``target``; returns where the model went.

    Without ``overwrite``, a file that appeared at ``target`` while the model trained (saved
    by another widget or command) is kept: the model gets the first free name
    ``<name>-2``, ``<name>-3`` … (no check-then-replace race: a hard link never replaces).
    """
    placed = _claim(model_path, target, overwrite)
    for suffix in (".csv", ".png"):
        curves = model_path.with_name(f"{model_path.stem}_history{suffix}")
        if curves.is_file():
            os.replace(curves, placed.with_name(f"{placed.stem}_history{suffix}"))
    return placed


def _claim(model_path: Path, target: Path, overwrite: bool) -> Path:
    if overwrite:
        os.replace(model_path, target)
        return target
    for n in range(1, 1000):
        candidate = target if n == 1 else target.with_stem(f"{target.stem}-{n}")
        try:
            os.link(model_path, candidate)
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links: check, then move
            if candidate.exists():
                continue
            os.replace(model_path, candidate)
            return candidate
        os.unlink(model_path)
        return candidate
    raise OSError(f"no free name like {target.name} in {target.parent}")
