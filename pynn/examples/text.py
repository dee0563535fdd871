"""Text classification: which NumPy module does a sentence of documentation come from?

The corpus ships inside an installed package: the sentences of the docstrings of numpy.fft,
numpy.linalg, numpy.random.Generator, numpy.strings and numpy.polynomial.polynomial (about
1,300 sentences with NumPy 2.x; code examples, references and sentences found in two modules
are left out). TextVectorization learns the vocabulary from the training sentences, and an
Embedding(mask_zero=True) -> LSTM -> Dense(softmax) classifier learns the module.

The id sequences are padded in front (pynn.utils.pad_sequences' default 'pre'), so the real
words are the LSTM's last steps whether or not the LSTM skips the masked ones. Once
Bidirectional lands (issue 14, the rnn branch) the recurrent layer can read both ways:
``layers.Bidirectional(layers.LSTM(units))``.

    python -m pynn.examples.text [--epochs 12] [--units 32] [--device opencl]
"""

import argparse
import inspect
import re
import sys
import time

import numpy as np

import pynn
from pynn import layers

MODULES = ("fft", "linalg", "random", "strings", "polynomial")
# Sections after these headings are code, citations or cross references, not prose.
_TAIL = re.compile(r"\n(?:Examples|References|See Also|Notes)\n-+")


def _module(name):
    return {"fft": np.fft, "linalg": np.linalg, "random": np.random.Generator,
            "strings": np.strings, "polynomial": np.polynomial.polynomial}[name]


def load_corpus(min_words=4, max_words=50):
    """-> (sentences, labels (int32), class names), in a fixed order."""
    found = {}
    for label, name in enumerate(MODULES):
        module = _module(name)
        for attr in sorted(dir(module)):
            obj = getattr(module, attr)
            if attr.startswith("_") or not callable(obj):
                continue
            doc = _TAIL.split(inspect.getdoc(obj) or "")[0]
            prose = " ".join(line.strip() for line in doc.splitlines()
                             if not line.strip().startswith((">>>", "...", "---", "===")))
            for sentence in re.split(r"(?<=[.!?])\s+", prose):
                if min_words <= len(sentence.split()) <= max_words:
                    found.setdefault(sentence, set()).add(label)
    kept = sorted((s, labels.pop()) for s, labels in found.items() if len(labels) == 1)
    return [s for s, _ in kept], np.array([lab for _, lab in kept], np.int32), list(MODULES)


def build_model(vocabulary_size, length, classes, units=32, embedding=32):
    return pynn.Sequential([
        layers.Input((length,), dtype="int32"),
        layers.Embedding(vocabulary_size, embedding, mask_zero=True),
        layers.LSTM(units),
        layers.Dense(classes, activation="softmax"),
    ], name="docstring_classifier")


def vectorize(vectorizer, sentences, length):
    """Token ids padded in front to ``length`` (TextVectorization pads after)."""
    ids = vectorizer(sentences)
    return pynn.utils.pad_sequences([row[row > 0] for row in ids], maxlen=length)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pynn.examples.text")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=4000)
    parser.add_argument("--length", type=int, default=40, help="tokens kept per sentence")
    parser.add_argument("--device", default=None, help="cpu (default), opencl or opencl:P:D")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device:
        pynn.set_device(args.device)
    pynn.utils.set_random_seed(args.seed)
    sentences, labels, names = load_corpus()
    order = np.random.default_rng(args.seed).permutation(len(sentences))
    n_test = len(order) // 5
    test, train = order[:n_test], order[n_test:]
    vectorizer = layers.TextVectorization(max_tokens=args.max_tokens)
    vectorizer.adapt([sentences[i] for i in train])
    x = vectorize(vectorizer, sentences, args.length)
    model = build_model(vectorizer.vocabulary_size(), args.length, len(names), args.units)
    model.compile(optimizer=pynn.optimizers.Adam(0.005),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x[train], labels[train], epochs=args.epochs, batch_size=args.batch_size,
              verbose=0)
    seconds = time.perf_counter() - start
    predicted = model.predict(x[test], verbose=0).argmax(axis=1)
    accuracy = float(np.mean(predicted == labels[test]))
    majority = float(np.max(np.bincount(labels[test], minlength=len(names))) / len(test))
    print(f"{len(sentences)} sentences from numpy {np.__version__} ({', '.join(names)}), "
          f"vocabulary {vectorizer.vocabulary_size()}, {len(train)} train / {len(test)} test; "
          f"{args.epochs} epochs in {seconds:.1f} s")
    print(f"test accuracy {accuracy:.3f} (majority class {majority:.3f})")
    for i, guess in list(zip(test, predicted))[:3]:
        print(f"  {names[guess]:10s} (truth {names[labels[i]]:10s}) <- {sentences[i][:60]}")
    return 0 if accuracy > majority + 0.2 else 1


if __name__ == "__main__":
    sys.exit(main())
