"""The suite's sequence models (LSTM, GRU and a text classifier) in pynn and in PyTorch, with
the weight mapping that makes both compute the same losses (bench_cpu.check_training).

Loaded by bench_cpu.py from its own folder, also in the torch worker that runs without pynn:
nothing here imports pynn or torch at module level.

Keras's LSTM gates (i, f, c, o) are torch's (i, f, g, o); Keras's GRU (reset_after=True, bias
rows input/recurrent) computes torch's GRU cell with the gate blocks ordered (z, r, h) where
torch orders (r, z, n). Legend: N batch, T time steps, C features, U units, V vocabulary.
"""

import numpy as np

T, C, U = 32, 32, 128
VOCAB, EMBED, TEXT_UNITS = 8000, 64, 64
# The text model averages its embeddings (Keras's text-classification example, fastText's
# shape): behind an LSTM the first tokens' gradients vanish to ~1e-9, where Keras's and
# torch's Adam place epsilon differently and the two frameworks' losses part by ~0.5%.

MODELS = {
    "lstm": {"input": (T, C), "classes": 10, "batch": "rnn_batch", "steps": "rnn_steps",
             "torch_ref_img_s": None},
    "gru": {"input": (T, C), "classes": 10, "batch": "rnn_batch", "steps": "rnn_steps",
            "torch_ref_img_s": None},
    # Token ids in, two classes out.
    "text": {"input": (T,), "vocab": VOCAB, "classes": 2, "batch": "rnn_batch",
             "steps": "rnn_steps", "torch_ref_img_s": None},
}


def pynn_model(name):
    import pynn
    from pynn import layers

    if name == "text":
        stack = [layers.Input((T,)), layers.Embedding(VOCAB, EMBED),
                 layers.GlobalAveragePooling1D(), layers.Dense(TEXT_UNITS, activation="relu"),
                 layers.Dense(2, activation="softmax")]
    else:
        cell = layers.LSTM if name == "lstm" else layers.GRU
        stack = [layers.Input((T, C)), cell(U), layers.Dense(10, activation="softmax")]
    model = pynn.Sequential(stack)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def torch_net(name):
    from torch import nn

    class TextClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, EMBED)
            self.hidden = nn.Linear(EMBED, TEXT_UNITS)
            self.head = nn.Linear(TEXT_UNITS, 2)

        def forward(self, x):
            return self.head(nn.functional.relu(self.hidden(self.embed(x).mean(dim=1))))

        def copy_from_pynn(self, model):
            copy_weights(model, self)

    class RecurrentClassifier(nn.Module):
        def __init__(self, cell, features, units, classes):
            super().__init__()
            self.rnn = getattr(nn, cell)(features, units, batch_first=True)
            self.head = nn.Linear(units, classes)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.head(y[:, -1])

        def copy_from_pynn(self, model):
            copy_weights(model, self)

    if name == "text":
        return TextClassifier()
    return RecurrentClassifier(name.upper(), C, U, 10)


def _gru_blocks(a, axis=-1):
    """Keras (z, r, h) gate blocks -> torch (r, z, n)."""
    z, r, h = np.split(a, 3, axis=axis)
    return np.concatenate([r, z, h], axis=axis)


def copy_weights(model, net):
    import torch

    def put(param, value):
        param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))

    dense = [net.hidden, net.head] if hasattr(net, "hidden") else [net.head]
    with torch.no_grad():
        for layer in model.layers:
            kind = type(layer).__name__
            w = layer.get_weights()
            if kind == "Embedding":
                put(net.embed.weight, w[0])
            elif kind == "LSTM":
                put(net.rnn.weight_ih_l0, w[0].T)
                put(net.rnn.weight_hh_l0, w[1].T)
                put(net.rnn.bias_ih_l0, w[2])
                net.rnn.bias_hh_l0.zero_()
            elif kind == "GRU":
                put(net.rnn.weight_ih_l0, _gru_blocks(w[0]).T)
                put(net.rnn.weight_hh_l0, _gru_blocks(w[1]).T)
                put(net.rnn.bias_ih_l0, _gru_blocks(w[2][0]))
                put(net.rnn.bias_hh_l0, _gru_blocks(w[2][1]))
            elif kind == "Dense":
                target = dense.pop(0)
                put(target.weight, w[0].T)
                put(target.bias, w[1])
