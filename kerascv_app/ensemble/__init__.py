"""``kcv ensemble``: several finished runs combined into one model.

The source document (section 3.3) combines several CNNs because the combination is more
accurate and more robust than any one of them. Three methods:

    average    the mean of the members' probabilities
    weighted   non-negative weights summing to one, fitted on the members' validation
               predictions by minimising the validation log-loss
    stacking   a scikit-learn meta-learner (logistic regression, calibrated ridge or
               gradient boosting) trained on the members' validation log-probabilities,
               its regularisation cross-validated; its reported validation score is
               out-of-fold, and it never sees test. When the validation split is too
               small, or stacking does not beat the weighted average out of fold, the
               weighted average is used and the reason given in one line

Members are combined from the predictions their runs saved (predictions/val.npz and
test.npz), so nothing is re-run unless ``--tta flip`` asks for mirrored predictions.
The result is an ensemble directory (see :mod:`kerascv_app.ensemble.directory`) whose
``model.keras`` holds the members and the combiner, so that ``kcv evaluate`` and
``kcv export`` take it like a run directory.

Nothing here imports keras at import time: the command selects the backend first.
"""
