"""Optimizers with Keras 3's names, defaults and update formulas.

A training step calls ``opt.apply(variables)``: for every trainable variable with a gradient
the optimizer (1) works out the clipping factor (``clipnorm`` per tensor or
``global_clipnorm`` over all gradients, from ``sum_squares``), then (2) calls ONE fused
backend op per variable that clips, applies decoupled weight decay and the update rule in
place, and finally (3) counts the step. A pruned variable's ``mask`` (pynn.compression) rides
along into that same op, which keeps its pruned weights and their slots at zero. Slots
(momentum, velocity, ...) live on the backend,
are created on first use and are keyed by ``variable.path``, which is also how
``get_state``/``set_state`` name them.
"""

import inspect
import math

import numpy as np

from pynn import backend, schedules
from pynn.variables import bump_version
from pynn.schedules import LearningRateSchedule

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Nadam", "Adamax",
           "Adadelta", "Ftrl", "Lion", "schedules", "serialize", "deserialize", "get"]
__all__ += ["Lamb", "Adafactor", "Muon"]  # opt
__all__ += ["ScheduleFreeAdamW"]  # misc


def _together(variables, scales):
    """([(variable, scale)] a many-parameter update can take: unmasked, of the first
    variable's dtype), ([the others], [their scales])."""
    dtype = variables[0].value.dtype if variables else None
    together, rest, rest_scales = [], [], []
    for v, scale in zip(variables, scales):
        if v.mask is None and v.value.dtype == dtype:
            together.append((v, scale))
        else:
            rest.append(v)
            rest_scales.append(scale)
    return together, (rest, rest_scales)


def _float_arg(cls_name, name, value, lo=None, hi=None, hi_open=False, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{cls_name}: `{name}` must be a float, got {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{cls_name}: `{name}` must be finite, got {value}")
    if (lo is not None and value < lo) or (hi is not None and (value > hi or
                                                              (hi_open and value == hi))):
        rb = ")" if hi_open else "]"
        raise ValueError(f"{cls_name}: `{name}` must be in [{lo}, {hi}{rb}, got {value}")
    return value


def _snake(name):
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def _set_grads(grads, variables):
    """Keras's apply(grads, variables): each gradient (a Tensor, an array or None) becomes
    its variable's ``grad``."""
    variables = list(variables)
    grads = list(grads)
    if len(grads) != len(variables):
        raise ValueError(f"apply: got {len(grads)} gradients for {len(variables)} variables")
    for g, v in zip(grads, variables):
        v.grad = None if g is None else getattr(g, "value", g)
    return variables


class Optimizer:
    """Base class. Subclasses list their slots in ``_slot_specs`` and run one backend op in
    ``_update``."""

    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        if kwargs.pop("decay", None) is not None:
            raise ValueError("Argument `decay` is no longer supported; use a learning rate "
                             "schedule.")
        # -- api: Keras 3's moving average of the weights (SwapEMAWeights reads it)
        self._init_ema(kwargs.pop("use_ema", False), kwargs.pop("ema_momentum", 0.99),
                       kwargs.pop("ema_overwrite_frequency", None))
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {kwargs}")
        cls_name = self.__class__.__name__
        if sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                f"global_clipnorm={global_clipnorm}"
            )
        self.name = _snake(cls_name) if name is None else str(name)
        self.weight_decay = _float_arg(cls_name, "weight_decay", weight_decay, lo=0.0,
                                       allow_none=True)
        # Like Keras, a clip set to 0 or less counts as set but clips nothing.
        self.clipnorm = _float_arg(cls_name, "clipnorm", clipnorm, allow_none=True)
        self.clipvalue = _float_arg(cls_name, "clipvalue", clipvalue, allow_none=True)
        self.global_clipnorm = _float_arg(cls_name, "global_clipnorm", global_clipnorm,
                                          allow_none=True)
        self._learning_rate = self._check_learning_rate(learning_rate)
        self.iterations = 0
        self._slots = {}  # variable.path -> {slot name: backend array}

    # -- learning rate -------------------------------------------------------------------
    def _check_learning_rate(self, learning_rate):
        if isinstance(learning_rate, LearningRateSchedule) or callable(learning_rate):
            return learning_rate
        return _float_arg(self.__class__.__name__, "learning_rate", learning_rate)

    @property
    def learning_rate(self):
        """The learning rate at the current iteration (a float)."""
        return self.current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(self._learning_rate, LearningRateSchedule):
            raise TypeError("This optimizer was created with a LearningRateSchedule; its "
                            "learning rate cannot be set to a new value.")
        self._learning_rate = self._check_learning_rate(value)

    def current_learning_rate(self):
        """The learning rate used by the next ``apply`` (the schedule at ``iterations``)."""
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            return float(lr(self.iterations))
        if callable(lr):
            # Keras calls plain callables without arguments; pynn also accepts f(step).
            try:
                takes_step = bool(inspect.signature(lr).parameters)
            except (TypeError, ValueError):
                takes_step = True
            return float(lr(self.iterations) if takes_step else lr())
        return lr

    # -- the step ------------------------------------------------------------------------
    def _slot_specs(self):
        """[(slot name, initial value), ...] for each variable."""
        return []

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        raise NotImplementedError(f"{self.__class__.__name__} must implement _update")

    def _update_together(self, be, variables, scales, lr, clipvalue, weight_decay):
        """Update what one op can update at once; return the (variables, scales) left for
        _update, one op each. A rule with a many-parameter op overrides this."""
        return variables, scales

    def _slots_for(self, be, variable):
        slots = self._slots.get(variable.path)
        shape, dtype = tuple(variable.value.shape), variable.value.dtype
        if slots is None:
            slots = {}
            for slot_name, init in self._slot_specs():
                if init == 0.0:
                    slots[slot_name] = be.zeros(shape, dtype=dtype)
                else:
                    slots[slot_name] = be.full(shape, init, dtype=dtype)
            self._slots[variable.path] = slots
        else:
            for slot_name, arr in slots.items():
                if tuple(arr.shape) != shape:
                    raise ValueError(
                        f"{self.name}: slot '{variable.path}/{slot_name}' has shape "
                        f"{tuple(arr.shape)} but the variable has shape {shape}"
                    )
        return slots

    def _grad_scales(self, be, variables):
        """One clipping factor per variable (1.0 without clipnorm/global_clipnorm)."""
        if self.clipnorm is not None and self.clipnorm > 0:
            scales = []
            for v in variables:
                norm = math.sqrt(be.sum_squares(v.grad))
                scales.append(self._clip_factor(norm, self.clipnorm))
            return scales
        if self.global_clipnorm is not None and self.global_clipnorm > 0:
            norm = math.sqrt(math.fsum(be.sum_squares(v.grad) for v in variables))
            return [self._clip_factor(norm, self.global_clipnorm)] * len(variables)
        return [1.0] * len(variables)

    @staticmethod
    def _clip_factor(norm, clip):
        # Keras: g * clip / max(norm, clip); a non-finite global norm turns the step to NaN.
        if math.isnan(norm):
            return math.nan
        return clip / max(norm, clip)

    def apply_gradients(self, grads_and_vars):
        """Keras's ``apply_gradients(zip(grads, variables))``."""
        pairs = list(grads_and_vars)
        self.apply([g for g, _ in pairs], [v for _, v in pairs])

    def apply(self, variables, trainable_variables=None):
        """One optimizer step over ``variables`` (``pynn.variables.Variable``); frozen ones
        and ones without a gradient are skipped. ``iterations`` grows by one. Keras's form
        ``apply(grads, variables)`` (a GradientTape's gradients) is taken too."""
        if trainable_variables is not None:
            variables = _set_grads(variables, trainable_variables)
        variables = list(variables)
        if not variables:
            return
        be = backend.current()
        active = [v for v in variables if v.trainable and v.grad is not None]
        for v in active:
            if tuple(v.grad.shape) != tuple(v.value.shape):
                raise ValueError(f"{self.name}: gradient of '{v.path}' has shape "
                                 f"{tuple(v.grad.shape)}, expected {tuple(v.value.shape)}")
        lr = self.current_learning_rate()
        scales = self._grad_scales(be, active)
        clipvalue = self.clipvalue if self.clipvalue is not None and self.clipvalue > 0 else 0.0
        weight_decay = self.weight_decay or 0.0
        rest, rest_scales = self._update_together(be, active, scales, lr, clipvalue,
                                                  weight_decay)
        for v, scale in zip(rest, rest_scales):
            slots = self._slots_for(be, v)
            self._update(be, v.value, v.grad, slots, lr, scale, clipvalue, weight_decay,
                         mask=v.mask)
        for v in active:
            if v.constraint is not None:
                v.constraint(v.value)
        if self.use_ema:  # api: Keras 3's EMA, after the update and before iterations grows
            self._update_ema(be, [v for v in variables if v.trainable])
        self.iterations += 1
        bump_version()

    # -- state ---------------------------------------------------------------------------
    def get_state(self):
        """``{"iterations": int, "slots": {"<variable path>/<slot>": numpy array}}``."""
        be = backend.current()
        slots = {}
        for path, named in self._slots.items():
            for slot_name, arr in named.items():
                slots[f"{path}/{slot_name}"] = np.array(be.to_numpy(arr), copy=True)
        return {"iterations": int(self.iterations), "slots": slots}

    def set_state(self, state, variables):
        """Restore ``get_state()`` output for ``variables`` so training resumes exactly.

        Variables whose slots are absent from ``state`` get fresh slots on their next step;
        a slot that names no variable, or whose shape is wrong, is an error."""
        be = backend.current()
        saved = dict(state.get("slots", {}))
        names = [slot_name for slot_name, _ in self._slot_specs()]
        restored = {}
        for v in variables:
            keys = [f"{v.path}/{n}" for n in names]
            present = [k in saved for k in keys]
            if not any(present):
                continue
            if not all(present):
                missing = [k for k, p in zip(keys, present) if not p]
                raise ValueError(f"{self.name}.set_state: state lacks slots {missing}")
            slots = {}
            for slot_name, key in zip(names, keys):
                arr = np.asarray(saved.pop(key))
                if tuple(arr.shape) != tuple(v.value.shape):
                    raise ValueError(f"{self.name}.set_state: slot '{key}' has shape "
                                     f"{arr.shape}, expected {tuple(v.value.shape)}")
                slots[slot_name] = be.asarray(arr, dtype=v.value.dtype)
            restored[v.path] = slots
        if saved:
            raise ValueError(f"{self.name}.set_state: slots {sorted(saved)} match no variable "
                             f"(or are not slots of {self.__class__.__name__})")
        self._slots = restored
        self.iterations = int(state.get("iterations", 0))

    # -- config --------------------------------------------------------------------------
    def get_config(self):
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            lr = schedules.serialize(lr)
        elif callable(lr):
            raise TypeError(f"{self.name}: a plain callable learning rate cannot be "
                            "serialized; use a pynn.schedules.LearningRateSchedule")
        config = {
            "name": self.name,
            "learning_rate": lr,
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "global_clipnorm": self.global_clipnorm,
            "clipvalue": self.clipvalue,
        }
        if self.use_ema:  # api: Keras's EMA arguments, only where set (older configs unchanged)
            config.update(use_ema=True, ema_momentum=self.ema_momentum,
                          ema_overwrite_frequency=self.ema_overwrite_frequency)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Rebuild from ``get_config()``; a ``{"class_name", "config"}`` dict dispatches to
        its class."""
        if "class_name" in config and "config" in config:
            return deserialize(config, custom_objects=custom_objects)
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"],
                                                            custom_objects=custom_objects)
        return cls(**config)

    def __repr__(self):
        return f"<{self.__class__.__name__} name={self.name!r} iterations={self.iterations}>"

    # -- api: Keras 3's exponential moving average of the weights --------------------------
    def _init_ema(self, use_ema, ema_momentum, ema_overwrite_frequency):
        cls_name = self.__class__.__name__
        self.use_ema = bool(use_ema)
        self.ema_momentum = _float_arg(cls_name, "ema_momentum", ema_momentum, lo=0.0, hi=1.0)
        if ema_overwrite_frequency is not None and (
                isinstance(ema_overwrite_frequency, bool)
                or not isinstance(ema_overwrite_frequency, int) or ema_overwrite_frequency < 1):
            raise ValueError(f"{cls_name}: `ema_overwrite_frequency` must be an integer >= 1 "
                             f"or None. Received: {ema_overwrite_frequency!r}")
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self._ema = {}  # variable.path -> backend array: the moving average
        self._ema_variables = []  # the trainable variables in the order apply saw them

    def _update_ema(self, be, variables):
        """average = m * average + (1 - m) * w with m = 0 on the first step (Keras's rule),
        on the backend; every ema_overwrite_frequency steps the weights take the averages."""
        momentum = self.ema_momentum if self.iterations != 0 else 0.0
        for v in variables:
            average = self._ema.get(v.path)
            if average is None:
                average = self._ema[v.path] = be.zeros(tuple(v.value.shape),
                                                       str(v.value.dtype))
                self._ema_variables.append(v)
            be.scale_inplace(average, momentum)
            part = be.copy(v.value)
            be.scale_inplace(part, 1.0 - momentum)
            be.add_inplace(average, part)
        if self.ema_overwrite_frequency and (
                self.iterations + 1) % self.ema_overwrite_frequency == 0:
            for v in variables:
                v.value = be.copy(self._ema[v.path])

    def _check_ema(self, what):
        if not self.use_ema:
            raise ValueError(f"{what} must be used when `use_ema=True` is set on the "
                             f"optimizer. Received: use_ema={self.use_ema}")

    def swap_ema_weights(self):
        """The weights and their moving averages trade places (SwapEMAWeights)."""
        self._check_ema("SwapEMAWeights")
        for v in self._ema_variables:
            v.value, self._ema[v.path] = self._ema[v.path], v.value
        bump_version()

    def finalize_variable_values(self, var_list):
        """Keras's end of fit: with use_ema the weights become their moving averages."""
        if not self.use_ema:
            return
        be = backend.current()
        for v in var_list:
            if v.path in self._ema:
                v.value = be.copy(self._ema[v.path])
        bump_version()


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum; Keras 3's update:
    ``m = momentum*m - lr*g; w += m`` (nesterov: ``w += momentum*m - lr*g``)."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, **kwargs)
        self.momentum = _float_arg("SGD", "momentum", momentum, lo=0.0, hi=1.0)
        self.nesterov = bool(nesterov)

    def _slot_specs(self):
        return [("momentum", 0.0)] if self.momentum != 0 else []

    def _update_together(self, be, variables, scales, lr, clipvalue, weight_decay):
        # One sgd_update_many for the unmasked variables of the first one's dtype (see
        # Adam._update_together).
        many = getattr(be, "sgd_update_many", None)
        if many is None:
            return variables, scales
        together, rest = _together(variables, scales)
        if len(together) < 2:
            return variables, scales
        slots = [self._slots_for(be, v) for v, _ in together]
        many([v.value for v, _ in together], [v.grad for v, _ in together],
             [s["momentum"] for s in slots] if self.momentum != 0 else None, lr,
             self.momentum, self.nesterov, [sc for _, sc in together], clipvalue,
             weight_decay)
        return rest

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        be.sgd_update(w, g, slots.get("momentum"), lr, self.momentum, self.nesterov,
                      grad_scale, clipvalue, weight_decay, mask=mask)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config


class Adam(Optimizer):
    """Adam (Keras 3): epsilon is added to the uncorrected ``sqrt(v)``, the bias corrections
    are folded into the step size."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, **kwargs)
        cls_name = self.__class__.__name__
        self.beta_1 = _float_arg(cls_name, "beta_1", beta_1, lo=0.0, hi=1.0, hi_open=True)
        self.beta_2 = _float_arg(cls_name, "beta_2", beta_2, lo=0.0, hi=1.0, hi_open=True)
        self.epsilon = _float_arg(cls_name, "epsilon", epsilon, lo=0.0)
        self.amsgrad = bool(amsgrad)

    def _slot_specs(self):
        specs = [("momentum", 0.0), ("velocity", 0.0)]
        if self.amsgrad:
            specs.append(("velocity_hat", 0.0))
        return specs

    def _update_together(self, be, variables, scales, lr, clipvalue, weight_decay):
        # One adam_update_many for every unmasked variable of the first one's dtype: one
        # parallel job and no per-variable Python for the step (the 30-layer functional
        # model's step spent 0.37 ms of 0.77 in the per-variable calls). amsgrad, pruning
        # masks and a second dtype keep adam_update, which gives the same bits.
        many = getattr(be, "adam_update_many", None)
        if self.amsgrad or many is None:
            return variables, scales
        together, rest = _together(variables, scales)
        if len(together) < 2:
            return variables, scales
        ws, gs, ms, vs, sc = [], [], [], [], []
        for v, scale in together:
            slots = self._slots_for(be, v)
            ws.append(v.value)
            gs.append(v.grad)
            ms.append(slots["momentum"])
            vs.append(slots["velocity"])
            sc.append(scale)
        many(ws, gs, ms, vs, lr, self.beta_1, self.beta_2, self.epsilon, self.iterations + 1,
             sc, clipvalue, weight_decay)
        return rest

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        be.adam_update(w, g, slots["momentum"], slots["velocity"], slots.get("velocity_hat"),
                       lr, self.beta_1, self.beta_2, self.epsilon, self.iterations + 1,
                       grad_scale, clipvalue, weight_decay, mask=mask)

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                       "amsgrad": self.amsgrad})
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay ``w -= w * weight_decay * lr`` before the step."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: "
                             "weight_decay=None")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, amsgrad=amsgrad, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, **kwargs)


class RMSprop(Optimizer):
    """RMSprop (Keras 3): epsilon inside the square root; optional plain momentum and
    centering."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7,
                 centered=False, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, **kwargs)
        self.rho = _float_arg("RMSprop", "rho", rho, lo=0.0, hi=1.0)
        self.momentum = _float_arg("RMSprop", "momentum", momentum, lo=0.0)
        self.epsilon = _float_arg("RMSprop", "epsilon", epsilon, lo=0.0)
        self.centered = bool(centered)

    def _slot_specs(self):
        specs = [("velocity", 0.0)]
        if self.momentum > 0:
            specs.append(("momentum", 0.0))
        if self.centered:
            specs.append(("average_gradient", 0.0))
        return specs

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        be.rmsprop_update(w, g, slots["velocity"], slots.get("momentum"),
                          slots.get("average_gradient"), lr, self.rho, self.momentum,
                          self.epsilon, grad_scale, clipvalue, weight_decay, mask=mask)

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                       "centered": self.centered})
        return config


class Adagrad(Optimizer):
    """Adagrad (Keras 3): the accumulator starts at ``initial_accumulator_value``, epsilon
    sits inside the square root."""

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, **kwargs)
        self.initial_accumulator_value = _float_arg("Adagrad", "initial_accumulator_value",
                                                    initial_accumulator_value, lo=0.0)
        self.epsilon = _float_arg("Adagrad", "epsilon", epsilon, lo=0.0)

    def _slot_specs(self):
        return [("accumulator", self.initial_accumulator_value)]

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        be.adagrad_update(w, g, slots["accumulator"], lr, self.epsilon, grad_scale,
                          clipvalue, weight_decay, mask=mask)

    def get_config(self):
        config = super().get_config()
        config.update({"initial_accumulator_value": self.initial_accumulator_value,
                       "epsilon": self.epsilon})
        return config


# -- Nadam, Adamax, Adadelta, Ftrl, Lion (issue 15) ------------------------------------------

class _BaseArgs(Optimizer):
    """The base arguments every Keras optimizer takes, passed through."""

    def __init__(self, learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                 name, kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue,
                         global_clipnorm=global_clipnorm, name=name, **kwargs)


class Nadam(_BaseArgs):
    """Nadam (Keras 3): Adam with Nesterov momentum on the schedule u_s = beta_1 (1 - 0.5 *
    0.96^s); the running product of the u_s (Keras's ``_u_product``) follows from the step
    count, so ``set_state`` replays it from ``iterations`` in the same float arithmetic."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         name, kwargs)
        self.beta_1 = _float_arg("Nadam", "beta_1", beta_1, lo=0.0, hi=1.0, hi_open=True)
        self.beta_2 = _float_arg("Nadam", "beta_2", beta_2, lo=0.0, hi=1.0, hi_open=True)
        self.epsilon = _float_arg("Nadam", "epsilon", epsilon, lo=0.0)
        self._u_product = 1.0

    def _next_u_product(self, u_product, step, dtype):
        # Keras: u_product * beta_1 * (1 - 0.5 * 0.96^step), in the variables' dtype.
        dt = np.dtype(dtype).type
        return float(dt(dt(u_product) * dt(self.beta_1))
                     * dt(dt(1) - dt(0.5) * dt(float(dt(0.96)) ** step)))

    def apply(self, variables, trainable_variables=None):
        if trainable_variables is not None:
            variables = _set_grads(variables, trainable_variables)
        variables = list(variables)
        if not variables:
            return
        previous = self._u_product
        self._u_product = self._next_u_product(previous, self.iterations + 1,
                                               variables[0].value.dtype)
        try:
            super().apply(variables)
        except Exception:
            self._u_product = previous  # the step did not happen
            raise

    def set_state(self, state, variables):
        variables = list(variables)
        super().set_state(state, variables)
        dtype = variables[0].value.dtype if variables else np.float32
        u_product = 1.0
        for step in range(1, self.iterations + 1):
            u_product = self._next_u_product(u_product, step, dtype)
        self._u_product = u_product

    def _slot_specs(self):
        return [("momentum", 0.0), ("velocity", 0.0)]

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        be.nadam_update(w, g, slots["momentum"], slots["velocity"], lr, self.beta_1,
                        self.beta_2, self.epsilon, self.iterations + 1, self._u_product,
                        grad_scale, clipvalue, weight_decay, mask=mask)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class Adamax(_BaseArgs):
    """Adamax (Keras 3): the infinity norm u = max(beta_2 u, |g|) replaces Adam's velocity."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         name, kwargs)
        self.beta_1 = _float_arg("Adamax", "beta_1", beta_1, lo=0.0, hi=1.0, hi_open=True)
        self.beta_2 = _float_arg("Adamax", "beta_2", beta_2, lo=0.0, hi=1.0)
        self.epsilon = _float_arg("Adamax", "epsilon", epsilon, lo=0.0)

    def _slot_specs(self):
        return [("momentum", 0.0), ("norm", 0.0)]

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        be.adamax_update(w, g, slots["momentum"], slots["norm"], lr, self.beta_1,
                         self.beta_2, self.epsilon, self.iterations + 1, grad_scale,
                         clipvalue, weight_decay, mask=mask)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class Adadelta(_BaseArgs):
    """Adadelta (Keras 3): the step is lr times the ratio of the two accumulators' RMS."""

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         name, kwargs)
        self.rho = _float_arg("Adadelta", "rho", rho, lo=0.0, hi=1.0)
        self.epsilon = _float_arg("Adadelta", "epsilon", epsilon, lo=0.0)

    def _slot_specs(self):
        return [("accumulated_grad", 0.0), ("accumulated_delta_var", 0.0)]

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        be.adadelta_update(w, g, slots["accumulated_grad"], slots["accumulated_delta_var"],
                           lr, self.rho, self.epsilon, grad_scale, clipvalue, weight_decay,
                           mask=mask)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


class Ftrl(_BaseArgs):
    """FTRL-proximal (Keras 3's form, with its L1/L2/L2-shrinkage strengths and beta)."""

    def __init__(self, learning_rate=0.001, learning_rate_power=-0.5,
                 initial_accumulator_value=0.1, l1_regularization_strength=0.0,
                 l2_regularization_strength=0.0, l2_shrinkage_regularization_strength=0.0,
                 beta=0.0, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         name, kwargs)
        self.learning_rate_power = _float_arg("Ftrl", "learning_rate_power",
                                              learning_rate_power, hi=0.0)
        self.initial_accumulator_value = _float_arg("Ftrl", "initial_accumulator_value",
                                                    initial_accumulator_value, lo=0.0)
        self.l1_regularization_strength = _float_arg(
            "Ftrl", "l1_regularization_strength", l1_regularization_strength, lo=0.0)
        self.l2_regularization_strength = _float_arg(
            "Ftrl", "l2_regularization_strength", l2_regularization_strength, lo=0.0)
        self.l2_shrinkage_regularization_strength = _float_arg(
            "Ftrl", "l2_shrinkage_regularization_strength",
            l2_shrinkage_regularization_strength, lo=0.0)
        self.beta = _float_arg("Ftrl", "beta", beta)

    def _slot_specs(self):
        return [("accumulator", self.initial_accumulator_value), ("linear", 0.0)]

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        be.ftrl_update(w, g, slots["accumulator"], slots["linear"], lr,
                       self.learning_rate_power, self.l1_regularization_strength,
                       self.l2_regularization_strength,
                       self.l2_shrinkage_regularization_strength, self.beta, grad_scale,
                       clipvalue, weight_decay, mask=mask)

    def get_config(self):
        return {**super().get_config(), "learning_rate_power": self.learning_rate_power,
                "initial_accumulator_value": self.initial_accumulator_value,
                "l1_regularization_strength": self.l1_regularization_strength,
                "l2_regularization_strength": self.l2_regularization_strength,
                "l2_shrinkage_regularization_strength":
                    self.l2_shrinkage_regularization_strength,
                "beta": self.beta}


class Lion(_BaseArgs):
    """Lion (Keras 3): a sign step on the interpolation of momentum and gradient."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         name, kwargs)
        if isinstance(beta_1, (int, float)) and not isinstance(beta_1, bool) and \
                (beta_1 <= 0 or beta_1 > 1):
            raise ValueError("Lion: `beta_1` must be in the (0, 1] range. Otherwise, the "
                             f"optimizer degenerates to SignSGD. Received: beta_1={beta_1}.")
        self.beta_1 = _float_arg("Lion", "beta_1", beta_1, lo=0.0, hi=1.0)
        self.beta_2 = _float_arg("Lion", "beta_2", beta_2, lo=0.0, hi=1.0)

    def _slot_specs(self):
        return [("momentum", 0.0)]

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        be.lion_update(w, g, slots["momentum"], lr, self.beta_1, self.beta_2, grad_scale,
                       clipvalue, weight_decay, mask=mask)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2}


# -- opt: Lamb, Adafactor, Muon (Keras 3.15) ---------------------------------------------------

class _VariableSlots(_BaseArgs):
    """An optimizer whose slots depend on the variable (their shapes, or whether a variable
    has one): ``_variable_slot_specs(variable)`` lists (slot name, shape, initial value), in
    Keras's order. A pruning mask (pynn.compression) rides into the op as for the other
    optimizers: pruned elements read a zero gradient and keep zero weights and elementwise
    slots."""

    def _variable_slot_specs(self, variable):
        shape = tuple(variable.value.shape)
        return [(name, shape, init) for name, init in self._slot_specs()]

    def _slots_for(self, be, variable):
        specs = self._variable_slot_specs(variable)
        slots = self._slots.get(variable.path)
        dtype = variable.value.dtype
        if slots is None:
            slots = {name: (be.zeros(shape, dtype=dtype) if init == 0.0
                            else be.full(shape, init, dtype=dtype))
                     for name, shape, init in specs}
            self._slots[variable.path] = slots
        else:
            for name, shape, _ in specs:
                if name not in slots or tuple(slots[name].shape) != shape:
                    got = tuple(slots[name].shape) if name in slots else None
                    raise ValueError(f"{self.name}: slot '{variable.path}/{name}' has shape "
                                     f"{got} but the variable needs {shape}")
        return slots

    def set_state(self, state, variables):
        be = backend.current()
        saved = dict(state.get("slots", {}))
        restored = {}
        for v in variables:
            specs = self._variable_slot_specs(v)
            keys = [f"{v.path}/{name}" for name, _, _ in specs]
            present = [k in saved for k in keys]
            if not any(present):
                continue
            if not all(present):
                missing = [k for k, p in zip(keys, present) if not p]
                raise ValueError(f"{self.name}.set_state: state lacks slots {missing}")
            slots = {}
            for (name, shape, _), key in zip(specs, keys):
                arr = np.asarray(saved.pop(key))
                if tuple(arr.shape) != shape:
                    raise ValueError(f"{self.name}.set_state: slot '{key}' has shape "
                                     f"{arr.shape}, expected {shape}")
                slots[name] = be.asarray(arr, dtype=v.value.dtype)
            restored[v.path] = slots
        if saved:
            raise ValueError(f"{self.name}.set_state: slots {sorted(saved)} match no variable "
                             f"(or are not slots of {self.__class__.__name__})")
        self._slots = restored
        self.iterations = int(state.get("iterations", 0))


class Lamb(_VariableSlots):
    """Lamb (Keras 3): Adam's bias-corrected direction scaled by the layer-wise trust ratio
    ||w|| / ||update|| (1 where either norm is 0)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         name, kwargs)
        self.beta_1 = _float_arg("Lamb", "beta_1", beta_1, lo=0.0, hi=1.0, hi_open=True)
        self.beta_2 = _float_arg("Lamb", "beta_2", beta_2, lo=0.0, hi=1.0, hi_open=True)
        self.epsilon = _float_arg("Lamb", "epsilon", epsilon, lo=0.0)

    def _slot_specs(self):
        return [("momentum", 0.0), ("velocity", 0.0)]

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        be.lamb_update(w, g, slots["momentum"], slots["velocity"], lr, self.beta_1,
                       self.beta_2, self.epsilon, self.iterations + 1, grad_scale, clipvalue,
                       weight_decay, mask=mask)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class Adafactor(_VariableSlots):
    """Adafactor (Keras 3): for variables of rank >= 2 the second moment is factored into
    row means ``r`` (shape[:-1]) and column means ``c`` (shape[:-2] + shape[-1:]) of
    g^2 + epsilon_1 over the last two axes, decayed by 1 - t^beta_2_decay; the step is
    min(lr, 1/sqrt(t)) * max(epsilon_2, rms(w)), the update clipped to rms clip_threshold.

    Keras takes min(lr, 1/sqrt(t)) whether or not ``relative_step`` is set, so the flag
    changes nothing there or here; it is kept for the config."""

    def __init__(self, learning_rate=0.001, beta_2_decay=-0.8, epsilon_1=1e-30,
                 epsilon_2=1e-3, clip_threshold=1.0, relative_step=True, weight_decay=None,
                 clipnorm=None, clipvalue=None, global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         name, kwargs)
        self.beta_2_decay = _float_arg("Adafactor", "beta_2_decay", beta_2_decay)
        self.epsilon_1 = _float_arg("Adafactor", "epsilon_1", epsilon_1, lo=0.0)
        self.epsilon_2 = _float_arg("Adafactor", "epsilon_2", epsilon_2, lo=0.0)
        self.clip_threshold = _float_arg("Adafactor", "clip_threshold", clip_threshold,
                                         lo=0.0)
        if self.clip_threshold == 0.0:
            raise ValueError("Adafactor: `clip_threshold` must be > 0 (it divides the "
                             "update's rms), got 0.0")
        if not isinstance(relative_step, (bool, np.bool_)):
            raise ValueError(f"Adafactor: `relative_step` must be a bool, got "
                             f"{relative_step!r}")
        self.relative_step = bool(relative_step)

    def _variable_slot_specs(self, variable):
        from pynn.backend.operands.optim import adafactor_slot_shapes

        r_shape, c_shape, v_shape = adafactor_slot_shapes(variable.value.shape)
        return [("r", r_shape, 0.0), ("c", c_shape, 0.0), ("velocity", v_shape, 0.0)]

    def _slot_specs(self):
        return [("r", 0.0), ("c", 0.0), ("velocity", 0.0)]

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        factored = len(w.shape) >= 2
        be.adafactor_update(w, g, slots["r"] if factored else None,
                            slots["c"] if factored else None, slots["velocity"], lr,
                            self.beta_2_decay, self.epsilon_1, self.epsilon_2,
                            self.clip_threshold, self.iterations + 1, grad_scale, clipvalue,
                            weight_decay, mask=mask)

    def get_config(self):
        return {**super().get_config(), "beta_2_decay": self.beta_2_decay,
                "epsilon_1": self.epsilon_1, "epsilon_2": self.epsilon_2,
                "clip_threshold": self.clip_threshold, "relative_step": self.relative_step}


class Muon(_VariableSlots):
    """Muon (Keras 3): matrices take momentum orthogonalised by Keras's Newton-Schulz
    iteration, scaled by sqrt(max(rows, cols)) * rms_rate; every variable that is not 2-D,
    whose path contains "embedding" (exclude_embeddings) or matches a regular expression of
    ``exclude_layers`` takes an AdamW step at lr * adam_lr_ratio instead, decayed by
    ``adam_weight_decay`` (the matrices by ``weight_decay``), both at the base lr.

    pynn's variable paths are "<layer>/<weight>" where Keras's start with the model's name
    ("sequential/dense/kernel"): an ``exclude_layers`` pattern naming the model matches there
    only."""

    def __init__(self, learning_rate=0.001, adam_beta_1=0.9, adam_beta_2=0.999,
                 adam_weight_decay=0.004, epsilon=1e-7, weight_decay=0.004, clipnorm=None,
                 clipvalue=None, global_clipnorm=None, name=None, exclude_layers=None,
                 exclude_embeddings=True, muon_a=3.4445, muon_b=-4.7750, muon_c=2.0315,
                 adam_lr_ratio=1, momentum=0.95, ns_steps=5, nesterov=True, rms_rate=0.2,
                 **kwargs):
        import re

        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         name, kwargs)
        self.adam_beta_1 = _float_arg("Muon", "adam_beta_1", adam_beta_1, lo=0.0, hi=1.0,
                                      hi_open=True)
        self.adam_beta_2 = _float_arg("Muon", "adam_beta_2", adam_beta_2, lo=0.0, hi=1.0,
                                      hi_open=True)
        self.adam_weight_decay = _float_arg("Muon", "adam_weight_decay", adam_weight_decay,
                                            lo=0.0, allow_none=True)
        self.epsilon = _float_arg("Muon", "epsilon", epsilon, lo=0.0)
        self.muon_a = _float_arg("Muon", "muon_a", muon_a)
        self.muon_b = _float_arg("Muon", "muon_b", muon_b)
        self.muon_c = _float_arg("Muon", "muon_c", muon_c)
        self.adam_lr_ratio = _float_arg("Muon", "adam_lr_ratio", adam_lr_ratio, lo=0.0)
        self.momentum = _float_arg("Muon", "momentum", momentum, lo=0.0)
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, (int, np.integer)) or \
                not 0 <= ns_steps <= 1000:
            raise ValueError(f"Muon: `ns_steps` must be an int in [0, 1000], got {ns_steps!r}")
        self.ns_steps = int(ns_steps)
        self.nesterov = bool(nesterov)
        self.exclude_embeddings = bool(exclude_embeddings)
        layers = [] if exclude_layers is None else exclude_layers
        if isinstance(layers, str) or not all(isinstance(k, str) for k in layers):
            raise ValueError("Muon: `exclude_layers` must be a list of strings (regular "
                             f"expressions searched in variable paths), got {exclude_layers!r}")
        for keyword in layers:
            try:
                re.compile(keyword)
            except re.error as exc:
                raise ValueError(f"Muon: `exclude_layers` entry {keyword!r} is not a regular "
                                 f"expression ({exc})") from None
        self.exclude_layers = list(layers)
        self.rms_rate = _float_arg("Muon", "rms_rate", rms_rate, lo=0.0, allow_none=True)

    def _should_use_adamw(self, variable):
        """Keras's rule: not 2-D, an embedding (exclude_embeddings), or a path matched by one
        of exclude_layers."""
        import re

        if len(variable.value.shape) != 2:
            return True
        if self.exclude_embeddings and "embedding" in variable.path.lower():
            return True
        return any(re.search(keyword, variable.path) for keyword in self.exclude_layers)

    def _variable_slot_specs(self, variable):
        shape = tuple(variable.value.shape)
        specs = [("momentum", shape, 0.0)]
        if self._should_use_adamw(variable):
            specs.append(("velocity", shape, 0.0))
        return specs

    def _slot_specs(self):
        return [("momentum", 0.0), ("velocity", 0.0)]

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        # Each branch decays by its own rate at the base lr (Keras's _apply_weight_decay),
        # not the base class's weight_decay.
        if "velocity" in slots:
            decay = self.adam_weight_decay or 0.0
            adam_lr = lr * self.adam_lr_ratio
            if decay and adam_lr == 0.0:
                # adam_update scales its decay by its own lr: here that is 0.
                be.scale_inplace(w, 1.0 - decay * lr)
                decay = 0.0
            elif decay:
                decay = decay * lr / adam_lr
            be.adam_update(w, g, slots["momentum"], slots["velocity"], None, adam_lr,
                           self.adam_beta_1, self.adam_beta_2, self.epsilon,
                           self.iterations + 1, grad_scale, clipvalue, decay, mask=mask)
        else:
            be.muon_update(w, g, slots["momentum"], lr, self.momentum, self.nesterov,
                           self.ns_steps, self.muon_a, self.muon_b, self.muon_c,
                           self.rms_rate, grad_scale, clipvalue, self.weight_decay or 0.0,
                           mask=mask)

    def get_config(self):
        return {**super().get_config(), "adam_beta_1": self.adam_beta_1,
                "adam_beta_2": self.adam_beta_2, "epsilon": self.epsilon,
                "exclude_layers": list(self.exclude_layers), "muon_a": self.muon_a,
                "muon_b": self.muon_b, "muon_c": self.muon_c,
                "adam_lr_ratio": self.adam_lr_ratio, "momentum": self.momentum,
                "ns_steps": self.ns_steps, "nesterov": self.nesterov,
                "exclude_embeddings": self.exclude_embeddings,
                "adam_weight_decay": self.adam_weight_decay, "rms_rate": self.rms_rate}


_CLASSES = {cls.__name__.lower(): cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad, Nadam,
                                                  Adamax, Adadelta, Ftrl, Lion)}
# opt: Keras 3's Lamb, Adafactor and Muon
_CLASSES.update({cls.__name__.lower(): cls for cls in (Lamb, Adafactor, Muon)})



# -- misc: Keras 3's ScheduleFreeAdamW --
class ScheduleFreeAdamW(_VariableSlots):
    """Schedule-free AdamW (Keras 3.15): the weights hold y, an interpolation of z (the
    "momentum" slot, Adam steps without momentum, initialised to the weights) and x (the
    running average of the z, recovered from y and z), so no learning-rate schedule is
    needed; the rate warms up linearly over ``warmup_steps``. Keras 3.15 evaluates at y as it
    trains (it swaps nothing in at evaluation), and so does pynn."""

    def __init__(self, learning_rate=0.0025, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 warmup_steps=0, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm,
                         name, kwargs)
        label = "ScheduleFreeAdamW"
        # beta_1 divides when x is recovered from y and z.
        self.beta_1 = _float_arg(label, "beta_1", beta_1, lo=0.0, hi=1.0, hi_open=True)
        if self.beta_1 == 0.0:
            raise ValueError(f"{label}: `beta_1` must be > 0 (x = (y - (1-beta_1) z) / "
                             f"beta_1), got 0.0")
        self.beta_2 = _float_arg(label, "beta_2", beta_2, lo=0.0, hi=1.0, hi_open=True)
        self.epsilon = _float_arg(label, "epsilon", epsilon, lo=0.0)
        if isinstance(warmup_steps, (bool, np.bool_)) or not isinstance(
                warmup_steps, (int, np.integer)) or warmup_steps < 0:
            raise ValueError(f"{label}: `warmup_steps` must be an int >= 0, got "
                             f"{warmup_steps!r}")
        self.warmup_steps = int(warmup_steps)

    def _slot_specs(self):
        return [("momentum", None), ("velocity", 0.0)]

    def _slots_for(self, be, variable):
        if variable.path not in self._slots:
            # Keras's build assigns each momentum a copy of its variable (z starts at w).
            self._slots[variable.path] = {"momentum": be.copy(variable.value),
                                          "velocity": be.zeros(variable.value.shape,
                                                               dtype=variable.value.dtype)}
        return super()._slots_for(be, variable)

    def _update(self, be, w, g, slots, lr, grad_scale, clipvalue, weight_decay, mask=None):
        be.schedule_free_adamw_update(w, g, slots["momentum"], slots["velocity"], lr,
                                      self.beta_1, self.beta_2, self.epsilon,
                                      self.iterations + 1, self.warmup_steps, grad_scale,
                                      clipvalue, weight_decay, mask=mask)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "warmup_steps": self.warmup_steps}


_CLASSES.update({cls.__name__.lower(): cls for cls in (ScheduleFreeAdamW,)})


def serialize(optimizer):
    """``{"class_name": ..., "config": ...}``, JSON-serializable."""
    return {"class_name": optimizer.__class__.__name__, "config": optimizer.get_config()}


def deserialize(config, custom_objects=None):
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"deserialize: expected a dict with 'class_name', got {config!r}")
    name = config["class_name"]
    custom = custom_objects or {}
    cls = custom.get(name) or _CLASSES.get(str(name).lower())
    if cls is None:
        raise ValueError(f"Unknown optimizer {name!r}; known: {sorted(_CLASSES)}")
    return cls.from_config(dict(config.get("config") or {}), custom_objects=custom_objects)


def get(identifier):
    """An optimizer from a name ("adam", case-insensitive), a serialized dict or an
    instance; None passes through."""
    if identifier is None or isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        cls = _CLASSES.get(identifier.lower())
        if cls is None:
            raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}; "
                             f"known: {sorted(_CLASSES)}")
        return cls()
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")


# -- api: Keras 3's LossScaleOptimizer ----------------------------------------------------------
class LossScaleOptimizer(Optimizer):
    """Keras 3's dynamic loss scaling around ``inner_optimizer``. fit multiplies the loss (so
    every gradient) by ``dynamic_scale``; ``apply`` then checks the gradients: all finite, they
    are divided by the scale and the inner optimizer steps, and after
    ``dynamic_growth_steps`` such steps in a row the scale doubles; any inf or NaN skips the
    step (the inner optimizer's iterations do not move) and halves the scale. pynn's mixed
    precision is bfloat16, whose range is float32's, so scaling is rarely needed there;
    Keras allows it all the same."""

    def __init__(self, inner_optimizer, initial_scale=2.0 ** 15, dynamic_growth_steps=2000,
                 name=None, **kwargs):
        if not kwargs.pop("dynamic", True):
            raise ValueError("LossScaleOptimizer no longer supports `dynamic=False`. Instead, "
                             "simply set `loss_scale_factor` directly on the "
                             "`inner_optimizer`.")
        defaults = {"weight_decay": None, "clipnorm": None, "global_clipnorm": None,
                    "clipvalue": None, "use_ema": False, "ema_momentum": 0.99,
                    "ema_overwrite_frequency": None, "loss_scale_factor": None,
                    "gradient_accumulation_steps": None}
        for arg, default in defaults.items():
            if arg in kwargs and kwargs.pop(arg) != default:
                raise ValueError(f"LossScaleOptimizer does not support `{arg}`. Instead, set "
                                 f"`{arg}` on the `inner_optimizer`.")
        if kwargs:
            raise ValueError(f"LossScaleOptimizer does not support arguments: "
                             f"`{'`, `'.join(kwargs)}`.")
        if isinstance(inner_optimizer, (str, dict)):
            inner_optimizer = get(inner_optimizer)
        if not isinstance(inner_optimizer, Optimizer) or isinstance(inner_optimizer,
                                                                    LossScaleOptimizer):
            raise ValueError(f"LossScaleOptimizer: inner_optimizer must be a pynn optimizer "
                             f"(not another LossScaleOptimizer), got {inner_optimizer!r}")
        self.initial_scale = _float_arg("LossScaleOptimizer", "initial_scale", initial_scale)
        if not self.initial_scale > 0:
            raise ValueError(f"LossScaleOptimizer: initial_scale must be > 0, got "
                             f"{initial_scale!r}")
        if isinstance(dynamic_growth_steps, bool) or not isinstance(
                dynamic_growth_steps, int) or dynamic_growth_steps < 1:
            raise ValueError(f"LossScaleOptimizer: dynamic_growth_steps must be an int >= 1, "
                             f"got {dynamic_growth_steps!r}")
        self.inner_optimizer = inner_optimizer
        inner_iterations = inner_optimizer.iterations  # the base __init__ zeroes iterations
        super().__init__(learning_rate=0.0, name=name)
        inner_optimizer.iterations = inner_iterations
        self.initial_scale = initial_scale
        self.dynamic_growth_steps = dynamic_growth_steps
        # Keras keeps the scale in a float32 variable: its doublings and halvings round (and
        # saturate at inf) as float32 does
        self.dynamic_scale = float(np.float32(initial_scale))
        self.step_counter = 0

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @iterations.setter
    def iterations(self, value):
        if hasattr(self, "inner_optimizer"):
            self.inner_optimizer.iterations = value

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.inner_optimizer.learning_rate = value

    def current_learning_rate(self):
        return self.inner_optimizer.current_learning_rate()

    def current_loss_scale(self):
        """The factor fit multiplies this step's loss by."""
        return self.dynamic_scale

    def scale_loss(self, loss):
        return loss * self.dynamic_scale

    def check_finite(self, variables):
        """Whether every gradient of ``variables`` is finite: g * 0 is 0 where g is finite
        and NaN where it is inf or NaN, so its sum of squares is 0 exactly when all are
        (a copy, a scale and a reduction on the backend; squares of large finite values
        cannot overflow a sum of zeros)."""
        be = backend.current()
        for v in variables:
            if v.grad is None:
                continue
            probe = be.copy(v.grad)
            with np.errstate(invalid="ignore"):
                be.scale_inplace(probe, 0.0)
            if be.sum_squares(probe) != 0.0:
                return False
        return True

    def apply(self, variables, trainable_variables=None):
        if trainable_variables is not None:
            variables = _set_grads(variables, trainable_variables)
        variables = list(variables)
        active = [v for v in variables if v.trainable and v.grad is not None]
        if not self.check_finite(active):
            self.step_counter = 0
            self.dynamic_scale = float(np.float32(self.dynamic_scale) * np.float32(0.5))
            return
        be = backend.current()
        for v in active:
            be.scale_inplace(v.grad, 1.0 / self.dynamic_scale)
        self.inner_optimizer.apply(variables)
        if self.step_counter == self.dynamic_growth_steps - 1:
            self.step_counter = 0
            with np.errstate(over="ignore"):
                self.dynamic_scale = float(np.float32(self.dynamic_scale) * np.float32(2.0))
        else:
            self.step_counter += 1

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def swap_ema_weights(self):
        self.inner_optimizer.swap_ema_weights()

    def get_state(self):
        state = self.inner_optimizer.get_state()
        state["loss_scale"] = {"dynamic_scale": self.dynamic_scale,
                               "step_counter": self.step_counter}
        return state

    def set_state(self, state, variables):
        state = dict(state)
        scale = state.pop("loss_scale", None)
        self.inner_optimizer.set_state(state, variables)
        if scale is not None:
            self.dynamic_scale = float(scale["dynamic_scale"])
            self.step_counter = int(scale["step_counter"])

    def get_config(self):
        return {"name": self.name, "inner_optimizer": serialize(self.inner_optimizer),
                "initial_scale": self.initial_scale,
                "dynamic_growth_steps": self.dynamic_growth_steps}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        if "class_name" in config and "config" in config:
            return deserialize(config, custom_objects=custom_objects)
        config = dict(config)
        inner = deserialize(config.pop("inner_optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)


__all__.append("LossScaleOptimizer")
_CLASSES[LossScaleOptimizer.__name__.lower()] = LossScaleOptimizer


# -- api: Keras 3's OptimizerMap and MultiOptimizer ----------------------------------------------
import collections.abc  # noqa: E402
import re  # noqa: E402

class OptimizerMap(collections.abc.MutableMapping):
    """Variable paths (exact, else a ``re.fullmatch`` pattern) to optimizers, with a default
    for the rest; ``optimizer_map(variable)`` picks a variable's optimizer."""

    def __init__(self, default_optimizer, optimizer_map=None):
        if not isinstance(default_optimizer, Optimizer):
            raise TypeError(f"default_optimizer must be a pynn Optimizer instance. Received: "
                            f"{default_optimizer!r}")
        if optimizer_map is not None and not isinstance(optimizer_map, dict):
            raise TypeError(f"optimizer_map must be a dictionary. Received: {optimizer_map!r}")
        self._default_optimizer = default_optimizer
        self._optimizer_map = {}
        for key, optimizer in (optimizer_map or {}).items():
            self[key] = optimizer

    @property
    def default_optimizer(self):
        return self._default_optimizer

    def __getitem__(self, key):
        if key in self._optimizer_map:
            return self._optimizer_map[key]
        matching = [pattern for pattern in self._optimizer_map if re.fullmatch(pattern, key)]
        if len(matching) > 1:
            raise ValueError(f"Multiple optimizers assigned to variable {key} (patterns "
                             f"{matching}).")
        return self._optimizer_map[matching[0]] if matching else self._default_optimizer

    def __setitem__(self, key, optimizer):
        if key in self._optimizer_map:
            raise ValueError(f"'{key}' already exists in the OptimizerMap with value "
                             f"{self._optimizer_map[key]}. Please make sure to not use "
                             f"duplicated keys.")
        if not isinstance(key, str):
            raise ValueError(f"key must be a string. Received: {key!r}")
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"optimizer must be a pynn Optimizer instance. Received: "
                             f"{optimizer!r}")
        if isinstance(optimizer, (LossScaleOptimizer, MultiOptimizer)):
            raise ValueError(f"optimizer cannot be {type(optimizer).__name__}.")
        self._optimizer_map[key] = optimizer

    def __delitem__(self, key):
        del self._optimizer_map[key]

    def __len__(self):
        return len(self._optimizer_map)

    def __iter__(self):
        return iter(self._optimizer_map)

    def __call__(self, variable):
        return self[variable.path]

    def get_config(self):
        return {"default_optimizer": serialize(self._default_optimizer),
                "optimizer_map": {k: serialize(v) for k, v in self._optimizer_map.items()}}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(deserialize(config["default_optimizer"], custom_objects),
                   {k: deserialize(v, custom_objects)
                    for k, v in (config.get("optimizer_map") or {}).items()})


class MultiOptimizer(Optimizer):
    """Each variable stepped by the optimizer ``optimizer_map(variable)`` picks (an
    OptimizerMap or any function of a variable); ``iterations`` counts this optimizer's own
    steps. Its state is the inner optimizers' slots, each variable's under its path."""

    def __init__(self, optimizer_map, loss_scale_factor=None, name=None):
        if loss_scale_factor is not None:
            raise ValueError("MultiOptimizer: loss_scale_factor is not supported by pynn's "
                             "optimizers; wrap the model's optimizer in a LossScaleOptimizer "
                             "for loss scaling")
        if not callable(optimizer_map):
            raise ValueError(f"MultiOptimizer: optimizer_map must be an OptimizerMap or a "
                             f"function of a variable, got {optimizer_map!r}")
        super().__init__(learning_rate=0.0, name=name)
        self._optimizer_map = optimizer_map
        self.loss_scale_factor = None
        self._inner_optimizers = []
        for opt in list(getattr(optimizer_map, "values", lambda: [])()) + [
                getattr(optimizer_map, "default_optimizer", None)]:
            if opt is not None and opt not in self._inner_optimizers:
                self._inner_optimizers.append(opt)

    @property
    def optimizers(self):
        return self._inner_optimizers

    @property
    def learning_rate(self):
        raise AttributeError("Learning rate cannot be accessed on a MultiOptimizer. Access "
                             "the learning rate on the individual sub-optimizers instead.")

    @learning_rate.setter
    def learning_rate(self, value):
        if hasattr(self, "_optimizer_map"):
            raise AttributeError("Learning rate cannot be set on a MultiOptimizer. Set the "
                                 "learning rate on the individual sub-optimizers instead.")
        self._learning_rate = value

    def current_learning_rate(self):
        return self._inner_optimizers[0].current_learning_rate() if self._inner_optimizers \
            else 0.0

    def _optimizer_for(self, variable):
        opt = self._optimizer_map(variable)
        if not isinstance(opt, Optimizer):
            raise ValueError(f"Optimizer for variable {variable.path} is not an Optimizer "
                             f"instance.")
        if isinstance(opt, (LossScaleOptimizer, MultiOptimizer)):
            raise ValueError(f"{type(opt).__name__} cannot be used inside an MultiOptimizer.")
        if opt not in self._inner_optimizers:
            self._inner_optimizers.append(opt)
        return opt

    def _groups(self, variables):
        groups = {}
        for v in variables:
            groups.setdefault(id(self._optimizer_for(v)), []).append(v)
        return [(opt, groups[id(opt)]) for opt in self._inner_optimizers if id(opt) in groups]

    def apply(self, variables, trainable_variables=None):
        if trainable_variables is not None:
            variables = _set_grads(variables, trainable_variables)
        variables = list(variables)
        if not variables:
            return
        for opt, group in self._groups(variables):
            opt.apply(group)
        self.iterations += 1

    def finalize_variable_values(self, var_list):
        for opt, group in self._groups(var_list):
            opt.finalize_variable_values(group)

    def swap_ema_weights(self):
        users = [opt for opt in self._inner_optimizers if opt.use_ema]
        if not users:
            raise ValueError("SwapEMAWeights must be used when at least one inner optimizer "
                             "has `use_ema=True` set. Received a MultiOptimizer with all inner "
                             "optimizers having `use_ema=False`.")
        for opt in users:
            opt.swap_ema_weights()

    def get_state(self):
        slots = {}
        for opt in self._inner_optimizers:
            slots.update(opt.get_state()["slots"])
        return {"iterations": int(self.iterations), "slots": slots}

    def set_state(self, state, variables):
        slots = dict(state.get("slots", {}))
        for opt, group in self._groups(list(variables)):
            mine = {k: v for k, v in slots.items() if k.rsplit("/", 1)[0] in
                    {g.path for g in group}}
            for k in mine:
                slots.pop(k)
            # each inner optimizer stepped once per MultiOptimizer step that reached it
            opt.set_state({"iterations": int(state.get("iterations", 0)), "slots": mine},
                          group)
        if slots:
            raise ValueError(f"{self.name}.set_state: slots {sorted(slots)} match no variable")
        self.iterations = int(state.get("iterations", 0))

    def get_config(self):
        if not isinstance(self._optimizer_map, OptimizerMap):
            raise TypeError(f"{self.name}: a MultiOptimizer over a plain function cannot be "
                            f"serialized; give it an OptimizerMap")
        return {"optimizer_map": {"class_name": "OptimizerMap",
                                  "config": self._optimizer_map.get_config()},
                "loss_scale_factor": None, "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        if "class_name" in config and "config" in config:
            return deserialize(config, custom_objects=custom_objects)
        config = dict(config)
        mapping = config.pop("optimizer_map")
        if isinstance(mapping, dict) and "config" in mapping:
            mapping = mapping["config"]
        return cls(OptimizerMap.from_config(mapping, custom_objects), **config)


__all__ += ["MultiOptimizer", "OptimizerMap"]
_CLASSES[MultiOptimizer.__name__.lower()] = MultiOptimizer
