"""Other frameworks' model files: ``keras_files`` reads and writes Keras 3 ``.keras`` and
``.weights.h5`` files and reads Keras 2 / tf.keras ``.h5`` files. ``pynn.saving`` picks the
format from the file's suffix."""
