"""Other frameworks' model files: ``keras_files`` reads and writes Keras 3 ``.keras`` and
``.weights.h5`` files and reads Keras 2 / tf.keras ``.h5`` files. ``pynn.saving`` picks the
format from the file's suffix."""


def __getattr__(name):
    # `import pynn` defers keras_files to the first Keras file (pynn.__init__), so the attribute
    # is made on first access too.
    if name == "keras_files":
        import importlib

        return importlib.import_module("pynn.interop.keras_files")
    raise AttributeError(f"module 'pynn.interop' has no attribute {name!r}")
