"""Training callbacks with Keras 3's names and arguments, plus the progress bar and History."""

import collections.abc
import json
import math
import os
import struct
import sys
import time
import warnings

import numpy as np


def _is_primary():
    """False on MPI ranks other than 0 under pynn.distributed, so only one rank writes
    files; found through sys.modules so that callbacks never load MPI themselves."""
    module = sys.modules.get("pynn.distributed")
    return module is None or module.is_primary()


class Callback:
    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_batch_begin(self, batch, logs=None): ...
    def on_train_batch_end(self, batch, logs=None): ...
    def on_test_begin(self, logs=None): ...
    def on_test_end(self, logs=None): ...
    def on_predict_begin(self, logs=None): ...
    def on_predict_end(self, logs=None): ...


class CallbackList:
    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params(params)

    def __getattr__(self, hook):
        def call_all(*args, **kwargs):
            for cb in self.callbacks:
                getattr(cb, hook)(*args, **kwargs)
        return call_all


class ProgbarLogger(Callback):
    """Keras's ProgbarLogger: the progress bar of ``fit``. ``fit`` draws one itself when
    ``verbose``; passing a ProgbarLogger makes it the one that draws (never a second bar),
    with ``fit``'s ``verbose`` (1: a bar, 2: one line per epoch)."""

    def __init__(self):
        super().__init__()
        self._bar = None
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        verbose = self.params.get("verbose", 1)
        if verbose:
            print(f"Epoch {epoch + 1}/{self.params.get('epochs', '?')}")
        self._bar = Progbar(self.params.get("steps"), verbose)
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps = batch + 1
        if self._bar is not None:
            self._bar.update(batch + 1, logs)

    def on_epoch_end(self, epoch, logs=None):
        verbose = self.params.get("verbose", 1)
        if self._bar is None:
            return
        if verbose == 1:
            self._bar.update(self._steps, logs, finalize=True)
        elif verbose == 2:
            self._bar.summary_line(self._steps, logs)


class History(Callback):
    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


def format_logs(logs):
    parts = []
    for k, v in logs.items():
        if isinstance(v, float) and (abs(v) >= 1e-3 or v == 0):
            parts.append(f"{k}: {v:.4f}")
        else:
            parts.append(f"{k}: {v:.4e}" if isinstance(v, float) else f"{k}: {v}")
    return " - ".join(parts)


def format_time(seconds):
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{int(round(seconds))}s"


def format_step_time(seconds):
    if seconds >= 1:
        return f"{seconds:.0f}s/step"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}us/step"


class Progbar:
    """Keras 3's progress bar: ``12/57 ━━━━━━━━━━━━━━━━━━━━ 0s 3ms/step - loss: 0.3``.

    Redraws at most every 50 ms so the bar never costs per-batch time on fast models.
    """

    WIDTH = 20

    def __init__(self, target, verbose=1, stream=None):
        self.target = target
        self.verbose = verbose
        self.stream = stream or output_stream()  # api: keras.config's interactive logging
        self.start = time.perf_counter()
        self.last_draw = 0.0
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.prev_width = 0

    def _bar(self, current):
        if not self.target:
            return ""
        done = self.WIDTH * current / self.target
        full = int(done)
        bar = "━" * full
        if full < self.WIDTH:
            bar += "╸" if done - full >= 0.5 else "━"
            bar = "\x1b[1m" + bar[:full] + "\x1b[0m" + bar[full:] if self.interactive else bar
            bar += "━" * (self.WIDTH - full - 1)
        return bar

    def update(self, current, logs=None, finalize=False):
        now = time.perf_counter()
        if self.verbose != 1 or (not finalize and now - self.last_draw < 0.05):
            return
        if not finalize and not self.interactive:
            # A pipe or a log file cannot redraw a line: only the final line of each epoch is
            # written there, so logs stay one line per epoch.
            return
        self.last_draw = now
        elapsed = now - self.start
        per_step = elapsed / max(current, 1)
        if finalize:
            timing = f"{format_time(elapsed)} {format_step_time(per_step)}"
        else:
            eta = per_step * max((self.target or current) - current, 0)
            timing = f"{format_time(eta)} {format_step_time(per_step)}"
        width = len(str(self.target or current))
        line = f"{current:>{width}}/{self.target or '?'} {self._bar(current)} {timing}"
        if logs:
            line += " - " + format_logs(logs)
        if self.interactive:
            # Pad with spaces so a shorter line fully covers the previous one.
            padded = line.ljust(self.prev_width)
            self.prev_width = len(line)
            self.stream.write("\r" + padded + ("\n" if finalize else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def summary_line(self, steps, logs):
        """verbose=2: one line per epoch."""
        elapsed = time.perf_counter() - self.start
        line = (f"{steps}/{steps} - {format_time(elapsed)} - "
                f"{format_step_time(elapsed / max(steps, 1))}")
        if logs:
            line += " - " + format_logs(logs)
        self.stream.write(line + "\n")
        self.stream.flush()


def _resolve_mode(mode, monitor):
    if mode not in ("auto", "min", "max"):
        warnings.warn(f"mode {mode!r} is unknown, falling back to 'auto'", stacklevel=3)
        mode = "auto"
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.endswith(("precision", "recall", "f1_score"))
                         ) and "loss" not in monitor else "min"
    return mode


class EarlyStopping(Callback):
    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self.monitor = monitor
        self.min_delta = abs(min_delta)
        self.patience = patience
        self.verbose = verbose
        self.mode = _resolve_mode(mode, monitor)
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch

    def _improved(self, value, reference):
        if reference is None:
            return True
        if self.mode == "min":
            return value < reference - self.min_delta
        return value > reference + self.min_delta

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"EarlyStopping: metric '{self.monitor}' is not in the logs "
                          f"(available: {sorted(logs or {})})", stacklevel=2)
            return
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._improved(value, self.best):
            self.best = value
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improved(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        # Keras 3 restores the best weights at the end of training, stopped early or not.
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch",
                 initial_value_threshold=None):
        super().__init__()
        if save_freq != "epoch":
            raise ValueError(f"ModelCheckpoint: only save_freq='epoch' is supported, got "
                             f"{save_freq!r}")
        self.filepath = str(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.mode = _resolve_mode(mode, monitor)
        self.best = initial_value_threshold

    def on_epoch_end(self, epoch, logs=None):
        if not _is_primary():
            return
        logs = logs or {}
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                warnings.warn(f"ModelCheckpoint: metric '{self.monitor}' is not in the logs",
                              stacklevel=2)
                return
            better = self.best is None or (value < self.best if self.mode == "min"
                                           else value > self.best)
            if not better:
                return
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best} to "
                      f"{value:.5f}, saving model to {path}")
            self.best = value
        elif self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: saving model to {path}")
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


class TerminateOnNaN(Callback):
    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate at each epoch start to ``schedule(epoch, lr)``."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        lr = float(opt.current_learning_rate())
        try:
            new_lr = self.schedule(epoch, lr)
        except TypeError:
            new_lr = self.schedule(epoch)
        new_lr = float(np.asarray(new_lr))
        if not math.isfinite(new_lr):
            raise ValueError(f"LearningRateScheduler: schedule returned {new_lr} at epoch {epoch}")
        opt.learning_rate = new_lr
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {new_lr}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.current_learning_rate())


_DOWN_METRICS = {"mae", "mse", "rmse", "msle", "mape", "mean_absolute_error",
                 "mean_squared_error", "root_mean_squared_error", "log_cosh", "logcosh",
                 "mean_absolute_percentage_error", "mean_squared_logarithmic_error", "hinge",
                 "squared_hinge", "categorical_hinge", "poisson", "kl_divergence",
                 "binary_crossentropy", "categorical_crossentropy",
                 "sparse_categorical_crossentropy"}
_UP_METRIC_PARTS = ("acc", "precision", "recall", "f1", "fbeta", "auc", "iou",
                    "cosine_similarity")


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` once ``monitor`` has not improved by more
    than ``min_delta`` for ``patience`` epochs, then waits ``cooldown`` epochs; never below
    ``min_lr``. Puts ``learning_rate`` (before any reduction) into the epoch logs, as Keras 3.
    An optimizer built on a LearningRateSchedule cannot be reduced: its setter raises
    TypeError, as Keras's does."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0, **kwargs):
        super().__init__()
        if kwargs:
            raise ValueError(f"ReduceLROnPlateau: unknown arguments {sorted(kwargs)}")
        name = "ReduceLROnPlateau"
        if not isinstance(monitor, str):
            raise ValueError(f"{name}: monitor must be a metric name, got {monitor!r}")
        for arg, value in (("factor", factor), ("min_delta", min_delta), ("min_lr", min_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                    or not math.isfinite(value):
                raise ValueError(f"{name}: {arg} must be a finite number, got {value!r}")
        if factor >= 1.0:
            raise ValueError(f"{name} does not support a factor >= 1.0 (got factor={factor})")
        if factor < 0:
            raise ValueError(f"{name}: factor must be in [0, 1), got {factor}")
        if min_lr < 0:
            raise ValueError(f"{name}: min_lr must be >= 0, got {min_lr}")
        for arg, value in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name}: {arg} must be an int >= 0, got {value!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{name}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = int(patience)
        self.verbose = verbose
        self.mode = mode
        self.min_delta = abs(float(min_delta))
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)
        self._minimize = None
        self._reset()

    def _reset(self):
        self.best = None
        self.wait = 0
        self.cooldown_counter = 0

    def _set_direction(self):
        # Keras 3: 'auto' minimizes "loss"/"val_loss" and follows the metric's direction
        # otherwise; a name whose direction it cannot tell is an error.
        if self.mode != "auto":
            self._minimize = self.mode == "min"
            return
        name = self.monitor.removeprefix("val_")
        if name == "loss" or name.endswith("_loss") or name in _DOWN_METRICS:
            self._minimize = True
        elif any(part in name for part in _UP_METRIC_PARTS):
            self._minimize = False
        else:
            raise ValueError(f"ReduceLROnPlateau: cannot tell whether monitor="
                             f"'{self.monitor}' should be minimized or maximized; pass "
                             f"mode='min' or mode='max'")

    def _improved(self, current):
        if self.best is None:
            return True
        if self._minimize:
            return current + self.min_delta < self.best
        return current - self.min_delta > self.best

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(optimizer.current_learning_rate())
        if self._minimize is None:
            self._set_direction()
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"ReduceLROnPlateau: metric '{self.monitor}' is not in the logs "
                          f"(available: {sorted(logs)})", stacklevel=2)
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = float(optimizer.current_learning_rate())
                if old_lr > np.float32(self.min_lr):
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    optimizer.learning_rate = new_lr
                    if self.verbose > 0:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                              f"to {new_lr}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class CSVLogger(Callback):
    """One CSV row per epoch: header ``epoch,<sorted log keys>`` (plus ``val_<key>`` columns,
    filled with ``NA``, when the first epoch has no validation keys), as Keras 3 writes it.
    ``append=True`` continues an existing file without a second header."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        if not isinstance(filename, (str, os.PathLike)):
            raise ValueError(f"CSVLogger: filename must be a path, got {filename!r}")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        directory = os.path.dirname(os.path.abspath(os.fspath(filename)))
        if not os.path.isdir(directory):
            raise ValueError(f"CSVLogger: directory {directory!r} does not exist")
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = bool(append)
        self.keys = None
        self.writer = None
        self.csv_file = None
        self.append_header = True

    def on_train_begin(self, logs=None):
        if self.append:
            if os.path.exists(self.filename):
                with open(self.filename, "r", newline="") as f:
                    self.append_header = not bool(len(f.readline()))
            mode = "a"
        else:
            mode = "w"
        if self.csv_file is not None and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None
        self.keys = None
        try:
            self.csv_file = open(self.filename, mode, newline="")
        except OSError as exc:
            raise ValueError(f"CSVLogger: cannot open {self.filename!r} for writing "
                             f"({exc})") from None

    @staticmethod
    def _value(v):
        if isinstance(v, str):
            return v
        if isinstance(v, np.ndarray) and v.ndim == 0:
            return v
        if isinstance(v, collections.abc.Iterable):
            return f'"[{", ".join(map(str, v))}]"'
        return v

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            if self.keys and not any(k.startswith("val_") for k in self.keys):
                self.keys += ["val_" + k for k in self.keys]
        if self.writer is None:
            import csv

            dialect = type("PynnCSVDialect", (csv.excel,), {"delimiter": self.sep})
            self.writer = csv.DictWriter(self.csv_file, fieldnames=["epoch"] + self.keys,
                                         dialect=dialect)
            if self.append_header:
                self.writer.writeheader()
        row = {"epoch": epoch}
        row.update((k, self._value(logs.get(k, "NA"))) for k in self.keys)
        self.writer.writerow(row)
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        if self.csv_file is not None:
            self.csv_file.close()
        self.csv_file = None
        self.writer = None


_LAMBDA_HOOKS = {
    "on_epoch_begin": "epoch", "on_epoch_end": "epoch",
    "on_train_begin": None, "on_train_end": None,
    "on_train_batch_begin": "batch", "on_train_batch_end": "batch",
    "on_test_begin": None, "on_test_end": None,
    "on_predict_begin": None, "on_predict_end": None,
    "on_test_batch_begin": "batch", "on_test_batch_end": "batch",
    "on_predict_batch_begin": "batch", "on_predict_batch_end": "batch",
}


class LambdaCallback(Callback):
    """Callbacks from plain functions, with Keras's signatures: ``on_epoch_*(epoch, logs)``,
    ``on_train_*(logs)``, ``on_*_batch_*(batch, logs)``; the other hooks by keyword."""

    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None,
                 on_train_end=None, on_train_batch_begin=None, on_train_batch_end=None,
                 **kwargs):
        super().__init__()
        unknown = sorted(set(kwargs) - set(_LAMBDA_HOOKS))
        if unknown:
            raise ValueError(f"LambdaCallback: unknown hooks {unknown}; known: "
                             f"{sorted(_LAMBDA_HOOKS)}")
        hooks = dict(kwargs, on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                     on_train_begin=on_train_begin, on_train_end=on_train_end,
                     on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end)
        for hook, fn in hooks.items():
            if fn is None:
                continue
            if not callable(fn):
                raise ValueError(f"LambdaCallback: {hook} must be callable, got {fn!r}")
            setattr(self, hook, self._wrap(fn, _LAMBDA_HOOKS[hook] is not None))

    @staticmethod
    def _wrap(fn, indexed):
        # pynn's loop may call a hook without logs; Keras always passes them.
        if indexed:
            def hook(index, logs=None):
                return fn(index, logs)
        else:
            def hook(logs=None):
                return fn(logs)
        return hook


class BackupAndRestore(Callback):
    """Backs the model up (weights, optimizer state, shuffle generator) into ``backup_dir``;
    when ``fit`` starts again with a backup there, the model is restored and training
    resumes at the epoch the backup names. After a successful ``fit`` the backup is deleted
    when ``delete_checkpoint``. Writes are atomic, so a crash mid-write leaves the previous
    backup readable.

    ``save_freq``: ``"epoch"`` (resume at the epoch after the last completed one) or a
    number of batches, as Keras 3: a mid-epoch backup resumes at the start of its epoch,
    with the weights of that batch (the epoch's first batches are trained twice)."""

    MODEL_FILE = "latest.pynn"
    META_FILE = "training_metadata.json"

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__()
        if not backup_dir or not isinstance(backup_dir, (str, os.PathLike)):
            raise ValueError(f"BackupAndRestore: backup_dir must be a directory path, got "
                             f"{backup_dir!r}")
        if save_freq != "epoch" and (isinstance(save_freq, bool)
                                     or not isinstance(save_freq, (int, np.integer))
                                     or save_freq < 1):
            raise ValueError(f"BackupAndRestore: save_freq must be 'epoch' or a positive "
                             f"number of batches, got {save_freq!r}")
        self.backup_dir = os.fspath(backup_dir)
        if os.path.exists(self.backup_dir) and not os.path.isdir(self.backup_dir):
            raise ValueError(f"BackupAndRestore: backup_dir {self.backup_dir!r} is not a "
                             f"directory")
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        self.delete_checkpoint = bool(delete_checkpoint)
        self._model_path = os.path.join(self.backup_dir, self.MODEL_FILE)
        self._meta_path = os.path.join(self.backup_dir, self.META_FILE)
        self._current_epoch = 0
        self._batches_since_save = 0

    def on_train_begin(self, logs=None):
        self._batches_since_save = 0
        if not (os.path.exists(self._model_path) and os.path.exists(self._meta_path)):
            return
        from pynn import saving
        try:
            with open(self._meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"BackupAndRestore: cannot read {self._meta_path!r} "
                             f"({exc})") from None
        epoch = meta.get("epoch") if isinstance(meta, dict) else None
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"BackupAndRestore: {self._meta_path!r} holds no valid epoch")
        saving.restore_training_state(self.model, self._model_path)
        self.model._initial_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._current_epoch, batch)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch + 1, 0)

    def _save(self, epoch, batch):
        """The model, then the metadata naming the epoch to resume at (Keras's format)."""
        if not _is_primary():
            return
        try:
            os.makedirs(self.backup_dir, exist_ok=True)
            self.model.save(self._model_path)
            tmp = self._meta_path + f".tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump({"epoch": int(epoch), "batch": int(batch)}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._meta_path)
        except OSError as exc:
            raise ValueError(f"BackupAndRestore: cannot write the backup in "
                             f"{self.backup_dir!r} ({exc})") from None

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and _is_primary() and os.path.isdir(self.backup_dir):
            import shutil

            shutil.rmtree(self.backup_dir)


# -- TensorBoard: scalar event files, written without TensorFlow or tensorboard -------------
# An event file is a sequence of TFRecords (u64 length, masked CRC32C of the length, the
# bytes, masked CRC32C of the bytes), each an Event protobuf; the fields used here are
# encoded by hand: Event{wall_time=1 double, step=2 int64, file_version=3 string,
# summary=5 Summary}, Summary{value=1 repeated Value}, Value{tag=1 string, simple_value=2
# float}. TensorBoard's scalar dashboard reads simple_value summaries.

def _crc32c_table():
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli), TFRecord's checksum."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n):
    out = bytearray()
    n &= (1 << 64) - 1  # int64 as protobuf's two's-complement varint
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number, wire, payload):
    key = _varint(number << 3 | wire)
    if wire == 2:
        return key + _varint(len(payload)) + payload
    return key + payload


def _event(wall_time, step=None, file_version=None, scalars=None):
    out = _field(1, 1, struct.pack("<d", wall_time))
    if step is not None:
        out += _field(2, 0, _varint(int(step)))
    if file_version is not None:
        out += _field(3, 2, file_version.encode())
    if scalars:
        summary = b"".join(
            _field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
            for tag, value in scalars)
        out += _field(5, 2, summary)
    return out


def _record(data):
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", _masked_crc(length)) + data
            + struct.pack("<I", _masked_crc(data)))


class EventFileWriter:
    """Appends scalar summaries to a new ``events.out.tfevents.*`` file in ``log_dir``."""

    _count = 0

    def __init__(self, log_dir):
        import socket

        os.makedirs(log_dir, exist_ok=True)
        EventFileWriter._count += 1
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                f"{os.getpid()}.{EventFileWriter._count}.v2")
        self.path = os.path.join(log_dir, name)
        self._file = open(self.path, "wb")
        self._file.write(_record(_event(time.time(), file_version="brain.Event:2")))
        self._file.flush()

    def scalars(self, step, values):
        """One event holding every (tag, float) pair at ``step``."""
        self._file.write(_record(_event(time.time(), step=step, scalars=list(values))))

    def flush(self):
        self._file.flush()

    def close(self):
        if not self._file.closed:
            self._file.close()


def read_scalar_events(path):
    """[(step, tag, value)] of an event file's simple_value summaries, every record's CRCs
    checked: the small reader the tests use, and a way to read logs without TensorBoard."""
    def fields(buf):
        i = 0
        while i < len(buf):
            key, i = _read_varint(buf, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, i = _read_varint(buf, i)
            elif wire == 1:
                value, i = buf[i:i + 8], i + 8
            elif wire == 5:
                value, i = buf[i:i + 4], i + 4
            elif wire == 2:
                size, i = _read_varint(buf, i)
                value, i = buf[i:i + size], i + size
            else:
                raise ValueError(f"{path}: unsupported protobuf wire type {wire}")
            yield number, value

    out = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if crc != _masked_crc(header):
            raise ValueError(f"{path}: bad length CRC at byte {pos}")
        body = data[pos + 12:pos + 12 + length]
        (crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if crc != _masked_crc(body):
            raise ValueError(f"{path}: bad data CRC at byte {pos}")
        pos += 16 + length
        step = 0
        values = []
        for number, value in fields(body):
            if number == 2:
                step = value - (1 << 64) if value >= 1 << 63 else value
            elif number == 5:
                for _, v in fields(value):
                    tag, scalar = None, None
                    for n, item in fields(v):
                        if n == 1:
                            tag = item.decode()
                        elif n == 2:
                            (scalar,) = struct.unpack("<f", item)
                    values.append((tag, scalar))
        out.extend((step, tag, value) for tag, value in values)
    return out


def _read_varint(buf, i):
    shift = result = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


class TensorBoard(Callback):
    """Keras 3's TensorBoard, scalars only: ``log_dir/train`` gets ``epoch_<metric>`` each
    epoch (and ``batch_<metric>`` every ``update_freq`` batches when that is 'batch' or an
    int), ``log_dir/validation`` the ``val_`` logs as ``epoch_<metric>``. Histograms, graphs,
    images and profiling are not written (their arguments must keep Keras's defaults)."""

    def __init__(self, log_dir="logs", histogram_freq=0, write_graph=True, write_images=False,
                 write_steps_per_second=False, update_freq="epoch", profile_batch=0,
                 embeddings_freq=0, embeddings_metadata=None):
        super().__init__()
        if histogram_freq or write_images or profile_batch or embeddings_freq \
                or embeddings_metadata:
            raise NotImplementedError("TensorBoard: only scalars are written (histogram_freq, "
                                      "write_images, profile_batch, embeddings_* must stay "
                                      "off)")
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and (isinstance(update_freq, bool)
                                       or not isinstance(update_freq, int) or update_freq < 1):
            raise ValueError(f"TensorBoard: update_freq must be 'epoch', 'batch' or an int >= "
                             f"1, got {update_freq!r}")
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self.write_graph = write_graph
        self.write_steps_per_second = bool(write_steps_per_second)
        self._writers = {}
        self._train_step = 0
        self._epoch_start = None

    def _writer(self, which):
        if which not in self._writers:
            self._writers[which] = EventFileWriter(os.path.join(self.log_dir, which))
        return self._writers[which]

    def on_train_begin(self, logs=None):
        self._train_step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._epoch_steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._train_step += 1
        self._epoch_steps = getattr(self, "_epoch_steps", 0) + 1
        if self.update_freq == "epoch" or not _is_primary():
            return
        if self._train_step % self.update_freq == 0:
            self._writer("train").scalars(self._train_step, (
                (f"batch_{k}", float(v)) for k, v in (logs or {}).items()
                if isinstance(v, (int, float, np.floating))))

    def on_epoch_end(self, epoch, logs=None):
        if not _is_primary():
            return
        logs = logs or {}
        train, val = [], []
        for k, v in logs.items():
            if not isinstance(v, (int, float, np.floating)):
                continue
            if k.startswith("val_"):
                val.append((f"epoch_{k[4:]}", float(v)))
            else:
                train.append((f"epoch_{k}", float(v)))
        if self.write_steps_per_second and self._epoch_start is not None:
            elapsed = time.perf_counter() - self._epoch_start
            train.append(("epoch_steps_per_second",
                          self._epoch_steps / elapsed if elapsed > 0 else 0.0))
        if train:
            self._writer("train").scalars(epoch, train)
        if val:
            self._writer("validation").scalars(epoch, val)
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self._writers.values():
            w.close()
        self._writers = {}


# -- api: Keras 3's SwapEMAWeights and RemoteMonitor ---------------------------------------------
class SwapEMAWeights(Callback):
    """Evaluates with the optimizer's moving average of the weights (``use_ema=True``): the
    weights and their averages trade places around validation and back after it; with
    ``swap_on_epoch`` also from each epoch's end to the next epoch's start (the last epoch's
    averages then stay, as Keras finalizes them)."""

    def __init__(self, swap_on_epoch=False):
        super().__init__()
        self.swap_on_epoch = swap_on_epoch
        self._ema_weights_in_model = False

    def _optimizer(self):
        optimizer = self.model.optimizer
        return getattr(optimizer, "inner_optimizer", optimizer)

    def _swap_variables(self):
        self._optimizer().swap_ema_weights()

    def _finalize_ema_values(self):
        """Keras's: the averages take the current (averaged) weights, so the swap back
        after training leaves the averages in the model."""
        optimizer = self._optimizer()
        optimizer._check_ema("SwapEMAWeights")
        from pynn import backend
        be = backend.current()
        for v in optimizer._ema_variables:
            optimizer._ema[v.path] = be.copy(v.value)

    def on_epoch_begin(self, epoch, logs=None):
        if self.swap_on_epoch and self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = False

    def on_epoch_end(self, epoch, logs=None):
        if self.swap_on_epoch and not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True
            if epoch == self.params["epochs"] - 1:
                self._finalize_ema_values()

    def on_test_begin(self, logs=None):
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True

    def on_test_end(self, logs=None):
        if self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = False

    def on_predict_begin(self, logs=None):
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True

    def on_predict_end(self, logs=None):
        # Keras 3.15 tests `not in model` here, so after predict the averages stay in the
        # model; kept as Keras has it
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = False


class RemoteMonitor(Callback):
    """POSTs each epoch's logs to ``root + path``: a form field ``field`` holding the logs as
    JSON, or (``send_as_json``) the JSON itself as the body. An unreachable server is a
    warning, never an error, as in Keras; the standard library's urllib does the request."""

    TIMEOUT_S = 10.0  # Keras's requests call has none; a dead server must not stall training

    def __init__(self, root="http://localhost:9000", path="/publish/epoch/end/", field="data",
                 headers=None, send_as_json=False):
        super().__init__()
        if not isinstance(root, str) or not root.lower().startswith(("http://", "https://")):
            raise ValueError(f"RemoteMonitor: root must be an http:// or https:// URL, got "
                             f"{root!r}")
        self.root = root
        self.path = path
        self.field = field
        self.headers = headers
        self.send_as_json = send_as_json

    def on_epoch_end(self, epoch, logs=None):
        import urllib.error
        import urllib.parse
        import urllib.request

        send = {"epoch": epoch}
        for k, v in (logs or {}).items():
            send[k] = v.item() if isinstance(v, (np.ndarray, np.generic)) else v
        headers = dict(self.headers or {})
        if self.send_as_json:
            body = json.dumps(send).encode("utf-8")
            headers.setdefault("Content-Type", "application/json")
        else:
            body = urllib.parse.urlencode({self.field: json.dumps(send)}).encode("ascii")
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        request = urllib.request.Request(self.root + self.path, data=body, headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.TIMEOUT_S) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError):
            warnings.warn("Could not reach RemoteMonitor root server at " + str(self.root),
                          stacklevel=2)


class _LoggingStream:
    """Where progress lines go while pynn.config.disable_interactive_logging() holds: the
    "pynn" logger at INFO, one record per line (not a terminal, so bars are not redrawn)."""

    def write(self, text):
        import logging
        for line in text.replace("\r", "\n").splitlines():
            if line.strip():
                logging.getLogger("pynn").info(line)

    def flush(self):
        pass

    def isatty(self):
        return False


def output_stream():
    """sys.stdout, or the logger while keras.config's interactive logging is disabled."""
    from pynn import config
    return sys.stdout if config.is_interactive_logging_enabled() else _LoggingStream()
