"""Host-side data preparation: image augmentation and image files (``pynn.preprocessing.image``).

Nothing here runs on a backend: it feeds models with NumPy batches, like Keras's legacy
``keras.preprocessing`` package whose names and semantics it keeps.
"""

__all__ = ["image"]


def __getattr__(name):
    # pynn.utils re-exports image_files' functions, which runs this package at `import pynn`;
    # the augmentation module loads when something uses it.
    if name == "image":
        import importlib

        return importlib.import_module("pynn.preprocessing.image")  # binds it here too
    raise AttributeError(f"module 'pynn.preprocessing' has no attribute {name!r}")
