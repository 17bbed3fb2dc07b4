"""How member probabilities become one prediction: average, weighted average, stacking.

Every combiner is fitted on validation predictions only; test predictions are combined,
never learned from. Inputs are lists with one (images, classes) probability array per
member, in member order.

Stacking's features are the members' log-probabilities, log(max(p, FEATURE_FLOOR)), side
by side: a linear meta-learner on them can express a weighted geometric mean of the
members (a product of experts) and, through its class-by-class coefficients, trust a
member more on some classes than on others. Its regularisation is chosen by
cross-validation on the validation split. What "probabilities" means for each one:
    logistic  LogisticRegressionCV's predict_proba, softmax(X @ coef.T + intercept), with C
              chosen by cross-validated log-loss
    ridge     RidgeClassifierCV's decision scores (alpha chosen by its leave-one-out
              error), calibrated by temperature scaling (CalibratedClassifierCV, method
              "temperature", fitted on cross-validated scores): softmax(beta * scores),
              so its log-loss and calibration error mean what they say
    gbm       the gradient-boosted trees' predict_proba (not expressible as Keras layers)

Stacking earns its place or is not used: when the validation split has fewer than
STACKING_MINIMUM_PER_CLASS images of some class, or when the meta-learner's out-of-fold
validation log-loss is worse than the weighted average's (also cross-fitted on the same
folds), the weighted average is used instead and the reason is given in one line.
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
#: Fewer validation images of some class than this and stacking is not fitted: with 5
#: folds the meta-learner would see 8 or fewer of that class per fit.
STACKING_MINIMUM_PER_CLASS = 10
#: Member probabilities are floored here before the log: a float32 softmax can round a
#: probability to 0, and log(0) is no feature. The same floor is in model.keras.
FEATURE_FLOOR = 1e-6
#: The inverse regularisation strengths LogisticRegressionCV tries (C; smaller is
#: stronger). Log-probability features are of order 1 to 10, so C of 1e-3 flattens the
#: prediction towards the class frequencies. The weakest penalty is C = 10: weaker ones
#: let the coefficients grow past 10 on under-confident members, where float32 inference
#: in model.keras no longer matches scikit-learn's float64 to 1e-5 (measured: 17 at C =
#: 100 on digits members, 1e-5 apart), for little or no gain in held-out log-loss.
LOGISTIC_CS = tuple(np.logspace(-3, 1, 5))
#: The ridge penalties RidgeClassifierCV tries, from weak to strong; the same bound on
#: the weak end, for the same reason.
RIDGE_ALPHAS = tuple(np.logspace(-1, 3, 5))
RANDOM_STATE = 0


@dataclass
class Combination:
    """A fitted combiner and the ensemble's predictions.

    ``validation_probabilities`` are the ones the validation metrics report: plain for
    average, in-sample for weighted, out-of-fold for stacking (None without a validation
    split). ``fallback`` is the one-line reason when stacking was asked for and the
    weighted average was used instead (``method`` is then "weighted").
    """

    method: str
    meta_learner_name: str | None
    weights: np.ndarray | None
    meta_learner: object | None
    validation_probabilities: np.ndarray | None
    test_probabilities: np.ndarray
    fallback: str | None = None
    requested: str | None = None

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
        if self.fallback:
            record.update(requested=self.requested, fallback=self.fallback)
        if self.weights is not None:
            record["weights"] = [float(weight) for weight in self.weights]
            return record
        record["estimator"] = repr(self.meta_learner)
        record["regularisation"] = chosen_regularisation(self.meta_learner)
        if self.meta_learner_name in LINEAR_META_LEARNERS:
            kernel, bias = self.linear_parameters(num_classes)
            record["meta_learner_parameters"] = {
                "inputs": f"log(max(p, {FEATURE_FLOOR:g})) of the member probabilities p, concatenated in member order",
                "kernel": kernel.tolist(),
                "bias": bias.tolist(),
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


def choose_method(
    average: bool, weighted: bool, stacking: bool, meta_learner_name: str | None
) -> tuple[str, str | None]:
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
        raise UserError(
            f"--{method} is fitted on validation predictions, but the members have no validation split "
            "(data.val_fraction = 0): use --average"
        )


def weighted_average(member_probabilities: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return np.tensordot(weights, np.stack(member_probabilities), axes=1)


def _weighted_combination(
    method: str, weights: np.ndarray, validation, test, fallback: str | None = None, requested: str | None = None
) -> Combination:
    return Combination(
        method=method,
        meta_learner_name=None,
        weights=weights,
        meta_learner=None,
        validation_probabilities=None if validation is None else weighted_average(validation, weights),
        test_probabilities=weighted_average(test, weights),
        fallback=fallback,
        requested=requested,
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
    """The meta-learner's input: member log-probabilities side by side, in member order."""
    return np.log(np.maximum(np.concatenate(member_probabilities, axis=1), FEATURE_FLOOR))


def make_meta_learner(name: str, folds=MAXIMUM_FOLDS):
    """The scikit-learn meta-learner, its regularisation chosen by cross-validation on ``folds``."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegressionCV, RidgeClassifierCV

    if name == "logistic":
        # l1_ratios=(0,): a plain L2 penalty (scikit-learn 1.10 requires saying so).
        options = {
            "Cs": list(LOGISTIC_CS),
            "l1_ratios": (0.0,),
            "cv": folds,
            "scoring": "neg_log_loss",
            "max_iter": 5000,
        }
        if "use_legacy_attributes" in LogisticRegressionCV().get_params():
            # scikit-learn 1.9's future attributes now, without its FutureWarning.
            options["use_legacy_attributes"] = False
        return LogisticRegressionCV(**options)
    if name == "ridge":
        # ensemble=False: one ridge fitted on all images and one temperature fitted on
        # cross-validated scores, so the result stays one linear layer.
        return CalibratedClassifierCV(
            RidgeClassifierCV(alphas=list(RIDGE_ALPHAS)), method="temperature", cv=folds, ensemble=False
        )
    if name == "gbm":
        # Early stopping on a tenth of the images: without it, 100 rounds of 10-class
        # trees took 25 s on 600 validation images, to overfit them.
        return HistGradientBoostingClassifier(early_stopping=True, random_state=RANDOM_STATE)
    raise UserError(f"--meta {name!r} is unknown: use one of {', '.join(META_LEARNERS)}")


def meta_learner_probabilities(meta_learner, features: np.ndarray) -> np.ndarray:
    return meta_learner.predict_proba(features)


def chosen_regularisation(meta_learner) -> dict | None:
    """The penalty cross-validation chose, for ensemble.json."""
    if hasattr(meta_learner, "C_"):
        return {"C": float(np.atleast_1d(meta_learner.C_)[0]), "candidates": [float(c) for c in LOGISTIC_CS]}
    if hasattr(meta_learner, "calibrated_classifiers_"):
        calibrated = meta_learner.calibrated_classifiers_[0]
        return {
            "alpha": float(calibrated.estimator.alpha_),
            "candidates": [float(a) for a in RIDGE_ALPHAS],
            "inverse_temperature": float(calibrated.calibrators[0].beta_),
        }
    return None


def _stacked_combination(meta_learner_name: str, validation, validation_labels, test) -> Combination:
    from threadpoolctl import threadpool_limits

    requested = method_label("stacking", meta_learner_name)
    num_classes = test[0].shape[1]
    counts = np.bincount(validation_labels, minlength=num_classes)
    if counts.min() < STACKING_MINIMUM_PER_CLASS:
        reason = (
            f"the validation split has {counts.min()} image(s) of class index {int(counts.argmin())}; {requested} "
            f"needs at least {STACKING_MINIMUM_PER_CLASS} of every class "
            f"({STACKING_MINIMUM_PER_CLASS * num_classes} images for {num_classes} classes, "
            "raise data.val_fraction): used the weighted average (--weighted) instead"
        )
        return _weighted_combination(
            "weighted", fit_weights(validation, validation_labels), validation, test, reason, requested
        )
    features = stacking_features(validation)
    # The meta-learners are small problems (hundreds of features at most): BLAS and
    # OpenMP threads only add overhead, and on a busy machine a lot (measured: 35 s
    # against 6 s for logistic stacking of 3 digits members, 2 shared cores). The limit
    # reaches only libraries already loaded: scipy's and scikit-learn's load here first.
    import scipy.optimize  # noqa: F401
    import sklearn.calibration  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    with threadpool_limits(limits=1):
        meta_learner, out_of_fold = _fit_meta_learner(meta_learner_name, features, validation_labels)
        weighted_out_of_fold = _weighted_out_of_fold(validation, validation_labels)
    stacked_loss, weighted_loss = (
        log_loss(out_of_fold, validation_labels),
        log_loss(weighted_out_of_fold, validation_labels),
    )
    if stacked_loss > weighted_loss:
        reason = (
            f"on these {len(validation_labels)} validation images {requested}'s out-of-fold log-loss "
            f"{stacked_loss:.4f} is worse than the weighted average's {weighted_loss:.4f}: used the weighted "
            "average (--weighted) instead (more validation images"
            f"{', or --meta logistic,' if meta_learner_name != 'logistic' else ''} may let stacking earn its place)"
        )
        return _weighted_combination(
            "weighted", fit_weights(validation, validation_labels), validation, test, reason, requested
        )
    return Combination(
        method="stacking",
        meta_learner_name=meta_learner_name,
        weights=None,
        meta_learner=meta_learner,
        validation_probabilities=out_of_fold,
        test_probabilities=meta_learner_probabilities(meta_learner, stacking_features(test)),
    )


def validation_folds():
    from sklearn.model_selection import StratifiedKFold

    return StratifiedKFold(n_splits=MAXIMUM_FOLDS, shuffle=True, random_state=RANDOM_STATE)


def _fit_meta_learner(name: str, features: np.ndarray, labels: np.ndarray):
    """The meta-learner fitted on all validation images, and its out-of-fold probabilities.

    Out of fold, each validation image is scored by a meta-learner fitted without it.
    Logistic regression's C is chosen once, by LogisticRegressionCV on the same folds,
    and the out-of-fold probabilities are those of that C (re-choosing C inside each
    fold would cost 6 times the time; choosing 1 of 5 penalties on the same folds makes
    the score slightly optimistic). The ridge's penalty and temperature, cheap to fit,
    are chosen again inside each fold.
    """
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    folds = validation_folds()
    meta_learner = make_meta_learner(name, folds)
    if name == "logistic":
        meta_learner.fit(features, labels)
        chosen = LogisticRegression(
            C=float(np.atleast_1d(meta_learner.C_)[0]), l1_ratio=0.0, max_iter=meta_learner.max_iter
        )
        return meta_learner, cross_val_predict(chosen, features, labels, method="predict_proba", cv=folds)
    out_of_fold = cross_val_predict(clone(meta_learner), features, labels, method="predict_proba", cv=folds)
    return meta_learner.fit(features, labels), out_of_fold


def _weighted_out_of_fold(validation: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """The weighted average scored out of fold on the same folds: the bar stacking must clear."""
    scored = np.zeros_like(validation[0])
    for train_rows, held_out_rows in validation_folds().split(validation[0], labels):
        weights = fit_weights([probabilities[train_rows] for probabilities in validation], labels[train_rows])
        scored[held_out_rows] = weighted_average(
            [probabilities[held_out_rows] for probabilities in validation], weights
        )
    return scored


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-15))))


def linear_parameters(meta_learner, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A linear meta-learner as a Dense layer: logits = features @ kernel + bias.

    A calibrated ridge is its ridge's scores times the fitted inverse temperature beta.
    scikit-learn keeps one row of coefficients for two classes (the second class's
    score s); logistic regression's probability is softmax(0, s), and temperature
    scaling's is softmax(beta * (-s, s)) = softmax(0, 2 beta s).
    """
    scale, binary_scale = 1.0, 1.0
    if hasattr(meta_learner, "calibrated_classifiers_"):
        calibrated = meta_learner.calibrated_classifiers_[0]
        beta = float(calibrated.calibrators[0].beta_)
        meta_learner, scale, binary_scale = calibrated.estimator, beta, 2.0 * beta
    coefficients = np.atleast_2d(np.asarray(meta_learner.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(meta_learner.intercept_, dtype=np.float64))
    if coefficients.shape[0] == 1 and num_classes == 2:
        kernel = np.stack([np.zeros(coefficients.shape[1]), coefficients[0]], axis=1)
        return binary_scale * kernel, binary_scale * np.array([0.0, intercept[0]])
    return scale * coefficients.T, scale * intercept
