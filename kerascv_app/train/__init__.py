"""Training: optimizers and schedules, callbacks, and the fit driver."""
