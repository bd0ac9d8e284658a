"""The Train classifier widget: train a compact CNN on class folders in a spawned process."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)

from ..classification.architectures import DEFAULT_INPUT_SIZE
from ..classification.model_files import DEFAULT_MODEL_NAME, list_models
from ..classification.remote_training import (
    EpochEnd,
    TrainingCancelled,
    TrainingDone,
    TrainingEvent,
    TrainingFailed,
    TrainingJob,
)
from ..classification.training import FINE_TUNING_RECIPE, TrainingConfig, fine_tuning_config
from ..errors import BloodcellError
from ._widgets_common import (
    MODEL_EVENTS,
    DockWatcher,
    PlotCanvas,
    refresh_when_opened,
    while_open,
)

FROM_SCRATCH = "(new network)"


class TrainWidget(Container):
    """Pick a folder with one sub-folder of crops per class, name the model and train.

    TensorFlow runs in a spawned subprocess (:class:`TrainingJob`); a ``thread_worker``
    polls its queue, so the viewer stays responsive. The model is saved in the user
    models folder and appears in the Analyze and Batch widgets' model lists.
    """

    def __init__(self, napari_viewer, models_dir: Path | None = None):
        """``napari_viewer``: napari passes it by this name; training needs no viewer."""
        super().__init__(labels=True)
        self._models_dir = models_dir
        self._state: dict = {"busy": False, "job": None, "cancel_requested": False}
        self.data_dir = FileEdit(label="class folders", mode="d")
        self.name = LineEdit(label="model name", value="my-model")
        self.start_from = ComboBox(
            label="start from",
            choices=_starting_points,
            value=DEFAULT_MODEL_NAME,
            tooltip="fine-tune a model (its body is kept, the head rebuilt for your classes) "
            "or train a new network from scratch",
        )
        self.epochs = SpinBox(
            label="epochs",
            value=FINE_TUNING_RECIPE["epochs"],
            min=1,
            max=500,
            tooltip="at most; training stops earlier once the validation loss stops improving",
        )
        self.input_size = SpinBox(
            label="input size (px)",
            value=DEFAULT_INPUT_SIZE["compact"],
            min=16,
            max=224,
            step=8,
            tooltip="new networks only; fine-tuning keeps the model's input size",
        )
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.extend(
            [
                self.data_dir,
                self.name,
                self.start_from,
                self.epochs,
                self.input_size,
                self.train_button,
                self.cancel_button,
                self.status,
            ]
        )
        self.plot = PlotCanvas("epoch", "loss / accuracy")
        self.native.layout().addWidget(self.plot.canvas)
        self.history: dict[str, list[float]] = {}
        self.train_button.clicked.connect(self.train)
        self.cancel_button.clicked.connect(self.cancel)
        MODEL_EVENTS.changed.connect(self.start_from.reset_choices)  # a model saved elsewhere
        refresh_when_opened(self.start_from)  # … or from a terminal
        closing = partial(_close_job, self._state, self.start_from.reset_choices)
        self.native.destroyed.connect(closing)
        self._dock_watcher = DockWatcher(self.native, closing)  # napari's × (see there)

    def config(self) -> TrainingConfig:
        """Fine-tuning (the measured recipe; the initial model's input size) or from scratch."""
        if self.start_from.value == FROM_SCRATCH:
            return TrainingConfig(
                architecture="compact", input_size=self.input_size.value, epochs=self.epochs.value
            )
        return fine_tuning_config(self.start_from.value, epochs=self.epochs.value)

    def train(self) -> None:
        """Start training: the folders are checked (walked) and the job started in a worker
        thread, so a large folder chosen by mistake does not freeze napari; problems are
        shown as a notification."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        if self._state["busy"]:
            return
        if str(self.data_dir.value) in ("", "."):  # the field's default, never chosen
            show_error("choose the class folders: a folder with one sub-folder of crops per class")
            return
        name = self.name.value.strip()
        config = self.config()  # checked with the folders (TrainingConfig.resolved)
        new_job = partial(
            TrainingJob, [Path(self.data_dir.value)], name, config, models_dir=self._models_dir
        )
        self._state.update(busy=True, job=None, cancel_requested=False)
        self.history = {}
        self.plot.plot({})
        worker = create_worker(
            _training_events,
            new_job,
            self._state,
            # napari counts every yield: the started job (folders checked), then each epoch
            _progress={"total": config.epochs + 1, "desc": f"training {name}"},
            _start_thread=False,
        )
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._on_finished)
        self.train_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "checking the class folders…"
        worker.start()

    def cancel(self) -> None:
        """Stop after the current batch (while starting, reading crops or calibrating: within
        ~30 s; while the folders are checked: before the training starts); nothing is saved."""
        if self._state["busy"]:
            _request_cancel(self._state)
            self.status.value = "cancelling…"

    @while_open
    def _on_event(self, event) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        if isinstance(event, TrainingJob):
            if not self._state["cancel_requested"]:
                self.status.value = f"training {event.target.stem} on {', '.join(event.classes)}…"
        elif isinstance(event, EpochEnd):
            for key, value in event.logs.items():
                self.history.setdefault(key, []).append(value)
            self._plot_history()
            loss = event.logs.get("val_loss", float("nan"))
            if not self._state["cancel_requested"]:  # (an epoch ended before Cancel came)
                self.status.value = f"epoch {event.epoch}/{event.epochs}, val. loss {loss:.3f}"
        elif isinstance(event, TrainingDone):
            self.status.value = f"saved {event.model_path.name} ({', '.join(event.classes)})"
            show_info(f"model {event.model_path.stem!r} saved to {event.model_path.parent}")
            for note in event.notes:
                show_warning(note)
            MODEL_EVENTS.changed.emit()
        elif isinstance(event, TrainingCancelled):
            self.status.value = "cancelled: no model saved"
        elif isinstance(event, TrainingFailed):
            self.status.value = "failed (see notification)"
            show_error(event.message)

    def _plot_history(self) -> None:
        colours = {"loss": "C0", "val_loss": "C1", "accuracy": "C2", "val_accuracy": "C3"}
        self.plot.plot(
            {
                key: (np.arange(1, len(values) + 1), np.asarray(values), colours.get(key))
                for key, values in self.history.items()
                if key in colours
            }
        )

    @while_open
    def _on_finished(self) -> None:
        self._state.update(busy=False, job=None)
        self.train_button.enabled = True
        self.cancel_button.enabled = False


def _starting_points(_widget=None) -> list[str]:
    return [FROM_SCRATCH, *list_models()]


def _training_events(new_job, state: dict) -> Iterator[TrainingJob | TrainingEvent]:
    """Worker-thread body: make the job (its folders are walked and split here, not on
    napari's thread), start it unless cancelled meanwhile, yield it, then its events.
    ``state["job"]`` holds the started job, for :func:`_request_cancel`."""
    try:
        job = new_job()
        if state["cancel_requested"]:
            yield TrainingCancelled()
            return
        job.start()
    except BloodcellError as exc:
        yield TrainingFailed(str(exc))
        return
    except Exception as exc:  # e.g. a folder that cannot be listed: a message, no traceback
        yield TrainingFailed(f"training could not start ({type(exc).__name__}: {exc})")
        return
    state["job"] = job
    if state["cancel_requested"]:  # asked while the job was set: it may not have seen it
        job.cancel()
    yield job
    yield from job.events()


def _request_cancel(state: dict) -> None:
    """Ask a training to stop, whether or not its job has started (the worker thread
    sets the job, then reads the request; this sets the request, then reads the job: one
    of the two sees the other)."""
    state["cancel_requested"] = True
    if state["job"] is not None:
        state["job"].cancel()


def _close_job(state: dict, on_models_changed, *_args) -> None:
    """When the widget or its dock is destroyed (the first of them only): stop listening
    to model events and stop a running training (its poller then cleans up; its events
    are dropped)."""
    if state.get("closed"):
        return
    state["closed"] = True
    MODEL_EVENTS.changed.disconnect(on_models_changed)
    if state["busy"]:
        _request_cancel(state)
