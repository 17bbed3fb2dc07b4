"""Metrics, predictions and plots of a trained model."""
