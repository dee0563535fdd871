"""float64 NumPy reference of knowledge distillation's loss (pynn.compression.Distiller),
written from Keras's Distiller example: T^2 * KLDivergence(softmax(t/T), softmax(s/T)) with
keras.losses.kl_divergence's clipping of both distributions to [1e-7, 1], mean over the
batch."""

import numpy as np

EPS = 1e-7


def softmax_ref(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def distillation_loss_ref(teacher_logits, student_logits, temperature):
    p = np.clip(softmax_ref(np.asarray(teacher_logits, np.float64) / temperature), EPS, 1)
    q = np.clip(softmax_ref(np.asarray(student_logits, np.float64) / temperature), EPS, 1)
    return float(np.mean(np.sum(p * np.log(p / q), axis=-1)) * temperature ** 2)


def sparse_crossentropy_from_logits_ref(labels, logits):
    z = np.asarray(logits, np.float64)
    log_q = z - z.max(axis=-1, keepdims=True)
    log_q = log_q - np.log(np.exp(log_q).sum(axis=-1, keepdims=True))
    return float(-np.mean(log_q[np.arange(len(labels)), labels]))


def distiller_loss_ref(labels, teacher_logits, student_logits, alpha, temperature):
    """Keras's Distiller.compute_loss: alpha * student_loss + (1 - alpha) * distillation."""
    return (alpha * sparse_crossentropy_from_logits_ref(labels, student_logits)
            + (1 - alpha) * distillation_loss_ref(teacher_logits, student_logits, temperature))
