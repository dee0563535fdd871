"""Runnable examples on the digits bundled with scikit-learn (no download):
``python -m pynn.examples.autoencoder`` and ``python -m pynn.examples.residual_cnn``."""
