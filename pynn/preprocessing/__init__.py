"""Host-side data preparation: image augmentation and image files (``pynn.preprocessing.image``).

Nothing here runs on a backend: it feeds models with NumPy batches, like Keras's legacy
``keras.preprocessing`` package whose names and semantics it keeps.
"""

from pynn.preprocessing import image

__all__ = ["image"]
