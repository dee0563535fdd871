"""A trainable (or not) tensor held by a layer, living on the current backend."""


# Bumped whenever weights may have changed (an optimizer step, set_weights, a load): caches
# derived from weights (the inference plan's folded kernels) compare it to know they are stale.
_version = [0]


def bump_version():
    _version[0] += 1


def version():
    return _version[0]


class Variable:
    """``value`` is a backend array; ``grad`` is filled by the layer's backward pass.

    ``path`` is unique within a model ("dense_1/kernel") and names the variable in saved files
    and in optimizer state.
    """

    __slots__ = ("value", "grad", "path", "trainable", "regularizer", "constraint", "mask")

    def __init__(self, value, path, trainable=True, regularizer=None, constraint=None):
        self.value = value
        self.grad = None
        self.path = path
        self.trainable = trainable
        self.regularizer = regularizer
        # Called as constraint(value) after each optimizer update, projecting the backend
        # array in place (Keras applies constraints at the same point).
        self.constraint = constraint
        # Pruning (pynn.compression): None, or a backend uint8 array shaped like value whose
        # zeros the optimizer's fused update keeps at exactly zero.
        self.mask = None

    @property
    def shape(self):
        return tuple(self.value.shape)

    @property
    def name(self):
        return self.path.rsplit("/", 1)[-1]

    def __repr__(self):
        return f"<Variable {self.path} shape={self.shape} trainable={self.trainable}>"
