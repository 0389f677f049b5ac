"""The training worker: everything that imports TensorFlow lives here."""
