"""Augmentation: whole-batch operations for tf.data (pipeline) and for the model (device)."""
