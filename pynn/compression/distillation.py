"""Knowledge distillation (issue 18): Keras's ``Distiller`` example as a pynn Model.

``Distiller(student, teacher)`` is a model over the student's graph (its predict and evaluate
are the student's); ``fit`` trains only the student on

    loss = alpha * student_loss(y, s) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

with s the student's and t the teacher's logits (models ending without a softmax, as in
Keras's example). The teacher's soft targets come from its inference plan (``Plan.predict``:
folded BatchNorm, no training pass, no saved state); its weights never change.

Every step runs on the current backend's ops: the two softmaxes (activation_forward), the
divergence and its gradient (loss_forward_backward), the softmax's backward
(softmax_backward), scaled and added to the student loss's gradient. With u = s / T and
L = T^2 KL(p || softmax(u)): dL/ds = T^2 * (1/T) * dKL/du = T * softmax_backward(dKL/dq, q).
"""

from pynn import backend, losses
from pynn.models import Model


class Distiller(Model):
    """A student trained to match a teacher (and the labels). ``student`` and ``teacher`` are
    built pynn models with one output each, of the same shape."""

    def __init__(self, student, teacher, name=None):
        for role, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, Model) or not model.built:
                raise ValueError(f"Distiller: the {role} must be a built pynn Model, got "
                                 f"{model!r}")
            if len(model.outputs) != 1:
                raise ValueError(f"Distiller: the {role} must have one output, got "
                                 f"{len(model.outputs)}")
        if tuple(student.outputs[0].shape[1:]) != tuple(teacher.outputs[0].shape[1:]):
            raise ValueError(f"Distiller: the student's output shape "
                             f"{tuple(student.outputs[0].shape)} differs from the teacher's "
                             f"{tuple(teacher.outputs[0].shape)}")
        inputs = student.inputs if len(student.inputs) > 1 else student.inputs[0]
        super().__init__(inputs=inputs, outputs=student.outputs[0], name=name or "distiller")
        self.student = student
        self.teacher = teacher
        self.alpha = 0.1
        self.temperature = 3.0
        self.distillation_loss_fn = losses.get("kl_divergence")

    def compile(self, optimizer="adam", metrics=None, student_loss_fn=None,
                distillation_loss_fn="kl_divergence", alpha=0.1, temperature=3, **kwargs):
        """Keras's Distiller.compile: student_loss_fn is the student's loss on the labels
        (e.g. SparseCategoricalCrossentropy(from_logits=True)); distillation_loss_fn compares
        the softened distributions (a probability loss: kl_divergence by default)."""
        if student_loss_fn is None:
            raise ValueError("Distiller.compile: student_loss_fn is required, e.g. "
                             "losses.SparseCategoricalCrossentropy(from_logits=True)")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or \
                not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Distiller.compile: alpha must be a float in [0, 1], got "
                             f"{alpha!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
                not temperature > 0:
            raise ValueError(f"Distiller.compile: temperature must be a positive number, got "
                             f"{temperature!r}")
        distill = losses.get(distillation_loss_fn)
        if getattr(distill, "from_logits", False) or distill.sparse_labels:
            raise ValueError(f"Distiller.compile: distillation_loss_fn compares two "
                             f"probability distributions; got {distill.name!r} "
                             f"(from_logits or sparse labels)")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.distillation_loss_fn = distill
        super().compile(optimizer=optimizer, loss=student_loss_fn, metrics=metrics, **kwargs)

    def distillation_loss(self, teacher_logits, student_logits, need_grad=True):
        """(T^2 * divergence of the softened distributions as a float, its gradient with
        respect to the student's logits (backend array) or None)."""
        b = backend.current()
        t = self.temperature
        p = b.activation_forward(_scaled(b, teacher_logits, 1.0 / t), "softmax", 0.0)
        q = b.activation_forward(_scaled(b, student_logits, 1.0 / t), "softmax", 0.0)
        value, dq = self.distillation_loss_fn.forward_backward(p, q, need_grad=need_grad)
        if not need_grad:
            return value * t * t, None
        ds = b.softmax_backward(dq, q, -1)
        b.scale_inplace(ds, t)
        return value * t * t, ds

    def _train_step(self, xb, yb, swb=None):
        b = backend.current()
        for v in self._trainable:
            v.grad = None
        teacher_logits = self.teacher._plan.predict(xb)[0]
        outs, saved = self._plan.forward(xb, True)
        student_loss, per_output, grads = self._losses_and_grads(yb, outs, True, swb)
        distill, ds = self.distillation_loss(teacher_logits, outs[0])
        b.scale_inplace(grads[0], self.alpha)
        b.scale_inplace(ds, 1.0 - self.alpha)
        b.add_inplace(grads[0], ds)
        _, activity = self._plan.backward(grads, saved)
        if self._distribution is not None:
            self._distribution.reduce_gradients(self._trainable)
        penalty = activity + self.regularization_penalty()
        self.optimizer.apply(self._trainable)
        self._update_metrics(yb, outs)
        total = self.alpha * student_loss + (1.0 - self.alpha) * distill
        return total + penalty, per_output

    def get_config(self):
        raise NotImplementedError("Distiller is a training wrapper: save its student "
                                  "(distiller.student.save(...)), as Keras's example does")


def _scaled(b, a, factor):
    out = b.copy(a)
    b.scale_inplace(out, factor)
    return out
