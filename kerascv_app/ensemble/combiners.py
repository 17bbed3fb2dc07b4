"""How member probabilities become one prediction: average, weighted average, stacking.

Every combiner is fitted on validation predictions only; test predictions are combined,
never learned from. Inputs are lists with one (images, classes) probability array per
member, in member order.

What "probabilities" means for each stacking meta-learner:
    logistic  the logistic regression's predict_proba, softmax(X @ coef.T + intercept)
    ridge     softmax of the ridge classifier's decision function: a ranking score, not a
              calibrated probability; its accuracy is meaningful, its log-loss and
              calibration error describe these softmax scores
    gbm       the gradient-boosted trees' predict_proba (not expressible as Keras layers)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerascv_app.errors import UserError
from kerascv_app.evaluate.metrics import softmax

METHODS = ("average", "weighted", "stacking")
META_LEARNERS = ("logistic", "ridge", "gbm")
#: Meta-learners that are a linear layer followed by a softmax, so they fit in model.keras.
LINEAR_META_LEARNERS = ("logistic", "ridge")
#: At most this many cross-validation folds for the out-of-fold validation score.
MAXIMUM_FOLDS = 5
RANDOM_STATE = 0


@dataclass
class Combination:
    """A fitted combiner and the ensemble's predictions.

    ``validation_probabilities`` are the ones the validation metrics report: plain for
    average, in-sample for weighted, out-of-fold for stacking (None without a validation
    split).
    """

    method: str
    meta_learner_name: str | None
    weights: np.ndarray | None
    meta_learner: object | None
    validation_probabilities: np.ndarray | None
    test_probabilities: np.ndarray

    @property
    def label(self) -> str:
        return method_label(self.method, self.meta_learner_name)

    @property
    def exportable(self) -> bool:
        return has_keras_form(self.meta_learner_name)

    def linear_parameters(self, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(kernel (members*classes, classes), bias (classes,)) of a linear meta-learner."""
        return linear_parameters(self.meta_learner, num_classes)

    def record(self, num_classes: int) -> dict:
        """What ensemble.json says about the fitted combiner."""
        record = {"method": self.method, "meta_learner": self.meta_learner_name}
        if self.weights is not None:
            record["weights"] = [float(weight) for weight in self.weights]
            return record
        record["estimator"] = repr(self.meta_learner)
        if self.meta_learner_name in LINEAR_META_LEARNERS:
            kernel, bias = self.linear_parameters(num_classes)
            record["meta_learner_parameters"] = {
                "inputs": "member probabilities concatenated in member order",
                "kernel": kernel.tolist(), "bias": bias.tolist(),
                "outputs": "logits; probabilities = softmax(inputs @ kernel + bias)",
            }
        else:
            record["meta_learner_file"] = "meta_learner.joblib"
        return record


def method_label(method: str, meta_learner_name: str | None) -> str:
    """A short name: average, weighted, stacking-logistic, ..."""
    return f"{method}-{meta_learner_name}" if meta_learner_name else method


def has_keras_form(meta_learner_name: str | None) -> bool:
    """Whether the combiner can become Keras layers: everything but gbm's trees."""
    return meta_learner_name in (None, *LINEAR_META_LEARNERS)


def choose_method(average: bool, weighted: bool, stacking: bool, meta_learner_name: str | None) -> tuple[str, str | None]:
    """The one method the flags ask for, and the meta-learner (stacking only)."""
    chosen = [name for name, flag in zip(METHODS, (average, weighted, stacking)) if flag]
    if len(chosen) != 1:
        given = ", ".join(f"--{name}" for name in chosen) if chosen else "none"
        raise UserError(f"choose exactly one method: --average, --weighted or --stacking (given: {given})")
    method = chosen[0]
    if meta_learner_name is not None and method != "stacking":
        raise UserError(f"--meta {meta_learner_name} applies to --stacking only, not --{method}")
    if method == "stacking":
        return method, meta_learner_name or "logistic"
    return method, None


def combine(
    method: str,
    meta_learner_name: str | None,
    validation: list[np.ndarray] | None,
    validation_labels: np.ndarray | None,
    test: list[np.ndarray],
) -> Combination:
    """Fits the chosen combiner on validation and applies it to validation and test."""
    check_fittable(method, validation_labels, test[0].shape[1])
    if method == "average":
        weights = np.full(len(test), 1.0 / len(test))
        return _weighted_combination(method, weights, validation, test)
    if method == "weighted":
        return _weighted_combination(method, fit_weights(validation, validation_labels), validation, test)
    return _stacked_combination(meta_learner_name, validation, validation_labels, test)


def check_fittable(method: str, validation_labels: np.ndarray | None, num_classes: int) -> None:
    """Refuses, before any model is loaded, a method the validation split cannot fit."""
    if method == "average":
        return
    if validation_labels is None:
        raise UserError(f"--{method} is fitted on validation predictions, but the members have no validation split (data.val_fraction = 0): use --average")
    if method == "stacking":
        _fold_count(validation_labels, num_classes)


def weighted_average(member_probabilities: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return np.tensordot(weights, np.stack(member_probabilities), axes=1)


def _weighted_combination(method: str, weights: np.ndarray, validation, test) -> Combination:
    return Combination(
        method=method, meta_learner_name=None, weights=weights, meta_learner=None,
        validation_probabilities=None if validation is None else weighted_average(validation, weights),
        test_probabilities=weighted_average(test, weights),
    )


def fit_weights(member_probabilities: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to one that minimise the validation log-loss.

    The weights are the softmax of free parameters, so any parameters give valid weights
    and an unconstrained optimiser (L-BFGS) suffices. The log-loss depends only on the
    probability each member gives the true class, so that column is all it needs.
    """
    from scipy.optimize import minimize

    rows = np.arange(len(labels))
    true_class = np.stack([probabilities[rows, labels] for probabilities in member_probabilities], axis=1)

    def loss_and_gradient(parameters):
        weights = softmax(parameters)
        mixture = np.maximum(true_class @ weights, 1e-12)
        loss = -np.mean(np.log(mixture))
        gradient_by_weight = -(true_class / mixture[:, None]).mean(axis=0)
        # Chain rule through the softmax: dw_i/dp_j = w_i (delta_ij - w_j).
        return loss, weights * (gradient_by_weight - weights @ gradient_by_weight)

    result = minimize(loss_and_gradient, np.zeros(len(member_probabilities)), jac=True, method="L-BFGS-B")
    weights = softmax(result.x)
    return weights / weights.sum()


def stacking_features(member_probabilities: list[np.ndarray]) -> np.ndarray:
    """The meta-learner's input: member probabilities side by side, in member order."""
    return np.concatenate(member_probabilities, axis=1)


def make_meta_learner(name: str):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression, RidgeClassifier

    if name == "logistic":
        return LogisticRegression(max_iter=5000)
    if name == "ridge":
        return RidgeClassifier()
    if name == "gbm":
        return HistGradientBoostingClassifier(random_state=RANDOM_STATE)
    raise UserError(f"--meta {name!r} is unknown: use one of {', '.join(META_LEARNERS)}")


def meta_learner_probabilities(meta_learner, features: np.ndarray) -> np.ndarray:
    """predict_proba where the meta-learner has one; softmax of the ridge's scores otherwise."""
    if hasattr(meta_learner, "predict_proba"):
        return meta_learner.predict_proba(features)
    return scores_to_probabilities(meta_learner.decision_function(features))


def scores_to_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax of decision scores; a two-class score s counts as the logits (0, s)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = np.stack([np.zeros_like(scores), scores], axis=1)
    return softmax(scores)


def _stacked_combination(meta_learner_name: str, validation, validation_labels, test) -> Combination:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = _fold_count(validation_labels, validation[0].shape[1])
    features = stacking_features(validation)
    meta_learner = make_meta_learner(meta_learner_name)
    method = "predict_proba" if hasattr(meta_learner, "predict_proba") else "decision_function"
    # Out-of-fold predictions: each validation image is scored by a meta-learner that
    # did not see it, so the reported validation score is honest.
    out_of_fold = cross_val_predict(
        meta_learner, features, validation_labels, method=method,
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=RANDOM_STATE),
    )
    validation_probabilities = out_of_fold if method == "predict_proba" else scores_to_probabilities(out_of_fold)
    # The meta-learner that is kept is refitted on all validation images.
    meta_learner.fit(features, validation_labels)
    return Combination(
        method="stacking", meta_learner_name=meta_learner_name, weights=None, meta_learner=meta_learner,
        validation_probabilities=validation_probabilities,
        test_probabilities=meta_learner_probabilities(meta_learner, stacking_features(test)),
    )


def _fold_count(labels: np.ndarray, num_classes: int) -> int:
    """As many folds as the rarest class allows, up to MAXIMUM_FOLDS; every class needed."""
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() == 0:
        missing = [int(index) for index in np.flatnonzero(counts == 0)]
        raise UserError(f"the validation split has no image of class indices {missing}: stacking learns every class from validation; use more validation images (data.val_fraction) or --weighted")
    if counts.min() < 2:
        raise UserError(f"the validation split has only {counts.min()} image of some class: stacking cross-validates on validation and needs 2 or more per class; use more validation images or --weighted")
    return int(min(MAXIMUM_FOLDS, counts.min()))


def linear_parameters(meta_learner, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A linear meta-learner as a Dense layer: logits = features @ kernel + bias.

    scikit-learn keeps one row of coefficients for two classes (the second class's
    score); it becomes the logits (0, score), whose softmax is the same probability.
    """
    coefficients = np.atleast_2d(np.asarray(meta_learner.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(meta_learner.intercept_, dtype=np.float64))
    if coefficients.shape[0] == 1 and num_classes == 2:
        kernel = np.stack([np.zeros(coefficients.shape[1]), coefficients[0]], axis=1)
        return kernel, np.array([0.0, intercept[0]])
    return coefficients.T.copy(), intercept.copy()
