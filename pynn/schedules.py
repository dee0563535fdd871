"""Learning-rate schedules: Keras 3's formulas and argument names, evaluated on the host.

A schedule is called with the optimizer's step count (``optimizer.iterations`` before the
update) and returns a Python float. Keras computes in float32 tensors; pynn in float64, so
values agree to float32 rounding.
"""

import math

__all__ = [
    "LearningRateSchedule",
    "ExponentialDecay",
    "InverseTimeDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "CosineDecay",
    "serialize",
    "deserialize",
    "get",
]


def _positive_steps(name, value):
    if value <= 0:
        raise ValueError(f"Argument `{name}` must be > 0. Received: {name}={value}")


class LearningRateSchedule:
    """Base class: subclasses define ``__call__(step) -> float`` and ``get_config()``."""

    def __call__(self, step):
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override "
            "`__call__(self, step)`."
        )

    def get_config(self):
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override "
            "`get_config()` in order to be serializable."
        )

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.__class__.__name__}({args})"


class _RateDecay(LearningRateSchedule):
    """What ExponentialDecay and InverseTimeDecay share: Keras's four arguments and the
    progress ``step / decay_steps``, floored when ``staircase``."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase, name):
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name
        _positive_steps("decay_steps", decay_steps)

    def _progress(self, step):
        p = float(step) / self.decay_steps
        return math.floor(p) if self.staircase else p

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class ExponentialDecay(_RateDecay):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)`` (floored when
    ``staircase``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def __call__(self, step):
        return float(self.initial_learning_rate) * float(self.decay_rate) ** self._progress(step)


class InverseTimeDecay(_RateDecay):
    """``initial_learning_rate / (1 + decay_rate * step / decay_steps)`` (floored ratio
    when ``staircase``)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="InverseTimeDecay"):
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def __call__(self, step):
        return float(self.initial_learning_rate) / (1.0 + float(self.decay_rate)
                                                    * self._progress(step))


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after the last boundary."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "The length of boundaries should be 1 less than the length of values. "
                f"Received: boundaries={boundaries} of length {len(boundaries)}, and "
                f"values={values} of length {len(values)}."
            )
        if any(b1 < b0 for b0, b1 in zip(boundaries, boundaries[1:])):
            raise ValueError(f"`boundaries` must be sorted ascending. Received: {boundaries}")
        self.boundaries = list(boundaries)
        self.values = list(values)
        self.name = name

    def __call__(self, step):
        step = float(step)
        index = sum(1 for b in self.boundaries if step > b)
        return float(self.values[index])

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """Polynomial decay from ``initial_learning_rate`` to ``end_learning_rate`` over
    ``decay_steps`` (restarting with ever longer periods when ``cycle``)."""

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0,
                 cycle=False, name="PolynomialDecay"):
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = cycle
        self.name = name
        _positive_steps("decay_steps", decay_steps)

    def __call__(self, step):
        step = float(step)
        decay_steps = float(self.decay_steps)
        if self.cycle:
            multiplier = 1.0 if step == 0 else math.ceil(step / decay_steps)
            decay_steps *= multiplier
        else:
            step = min(step, decay_steps)
        p = step / decay_steps
        start, end = float(self.initial_learning_rate), float(self.end_learning_rate)
        return (start - end) * (1.0 - p) ** float(self.power) + end

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }


class CosineDecay(LearningRateSchedule):
    """Cosine decay to ``alpha * start`` over ``decay_steps``, optionally after a linear
    warmup from ``initial_learning_rate`` to ``warmup_target`` over ``warmup_steps``
    (the decay then starts from ``warmup_target``)."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_steps = warmup_steps
        self.warmup_target = warmup_target
        _positive_steps("decay_steps", decay_steps)

    def _decay(self, step, decay_from_lr):
        completed = step / float(self.decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * completed))
        alpha = float(self.alpha)
        return decay_from_lr * ((1.0 - alpha) * cosine + alpha)

    def __call__(self, step):
        step = float(step)
        start = float(self.initial_learning_rate)
        if self.warmup_target is None:
            return self._decay(min(step, float(self.decay_steps)), start)
        warmup_steps = float(self.warmup_steps)
        target = float(self.warmup_target)
        step = min(step, float(self.decay_steps) + warmup_steps)
        if step < warmup_steps:
            return (target - start) * (step / warmup_steps) + start
        return self._decay(step - warmup_steps, target)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


_CLASSES = {
    cls.__name__: cls
    for cls in (ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay, PolynomialDecay,
                CosineDecay)
}


def serialize(schedule):
    """``{"class_name": ..., "config": ...}``, JSON-serializable."""
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(f"serialize: expected a LearningRateSchedule, got {schedule!r}")
    return {"class_name": schedule.__class__.__name__, "config": schedule.get_config()}


def deserialize(config, custom_objects=None):
    """Inverse of :func:`serialize` (also accepts Keras's dicts, which carry extra keys)."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"deserialize: expected a dict with 'class_name', got {config!r}")
    name = config["class_name"]
    classes = dict(_CLASSES)
    classes.update(custom_objects or {})
    if name not in classes:
        raise ValueError(f"Unknown learning rate schedule {name!r}; known: {sorted(classes)}")
    return classes[name].from_config(dict(config.get("config", {})))


def get(identifier):
    """A schedule from an instance or a serialized dict; None passes through."""
    if identifier is None or isinstance(identifier, LearningRateSchedule):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(f"Could not interpret learning rate schedule: {identifier!r}")


# -- api: Keras 3's CosineDecayRestarts (SGDR) --------------------------------------------------
class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts: period i lasts ``first_decay_steps * t_mul**i`` steps
    and starts from ``m_mul**i`` times the initial rate (Keras's formula, the restart index
    from the geometric sum when t_mul != 1)."""

    def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0,
                 alpha=0.0, name="SGDRDecay"):
        _positive_steps("first_decay_steps", first_decay_steps)
        for arg, v in (("t_mul", t_mul), ("m_mul", m_mul)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"CosineDecayRestarts: {arg} must be a number > 0, got {v!r}")
        self.initial_learning_rate = initial_learning_rate
        self.first_decay_steps = first_decay_steps
        self._t_mul = t_mul
        self._m_mul = m_mul
        self.alpha = alpha
        self.name = name

    def __call__(self, step):
        completed = float(step) / float(self.first_decay_steps)
        t_mul, m_mul = float(self._t_mul), float(self._m_mul)
        if t_mul == 1.0:
            restart = math.floor(completed)
            completed -= restart
        else:
            restart = math.floor(math.log(1.0 - completed * (1.0 - t_mul)) / math.log(t_mul))
            done = (1.0 - t_mul ** restart) / (1.0 - t_mul)
            completed = (completed - done) / t_mul ** restart
        cosine = 0.5 * m_mul ** restart * (1.0 + math.cos(math.pi * completed))
        alpha = float(self.alpha)
        return float(self.initial_learning_rate) * ((1.0 - alpha) * cosine + alpha)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self._t_mul,
            "m_mul": self._m_mul,
            "alpha": self.alpha,
            "name": self.name,
        }


_CLASSES[CosineDecayRestarts.__name__] = CosineDecayRestarts
__all__.append("CosineDecayRestarts")
