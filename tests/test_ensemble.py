"""kcv ensemble on the backend under test: each method, the exported model's agreement with
the NumPy / scikit-learn combination, valid weights, refused members, kcv evaluate, and
stacking that beats averaging on members whose errors differ, or says why it was not used.

The members are three tiny digits runs made once per session, of two recipes: the digits
recipe with fc1 of 16 and 32 units, and a tiny ResNet recipe written here, over the same
data settings, so they share their splits (which follow data.split_seed).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from kcv_testing import REPO_ROOT, VALIDATION_FRACTION, assert_one_line_error, kcv_in_process, run_kcv

DIGITS = REPO_ROOT / "recipes" / "digits.py"
AGREEMENT_TOLERANCE = 1e-5

# Under jax: tests/test_tour.py builds a weighted ensemble of jax runs, and
# tests/test_export_onnx.py exports an averaged one and checks it against the members.
pytestmark = pytest.mark.backends("tensorflow", "torch")


def saved(run_dir, split_file="test.npz"):
    with np.load(run_dir / "predictions" / split_file) as predictions:
        return predictions["probabilities"].astype(np.float64), predictions["labels"]


def read_json(path):
    return json.loads(path.read_text())


def make_ensemble(tmp_path, members, *flags):
    out = tmp_path / "ensemble"
    result = run_kcv("ensemble", *members, *flags, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def exported_model_probabilities(ensemble_dir):
    """The ensemble's model.keras run on the test images, in this process."""
    from kerascv_app.config import Config
    from kerascv_app.data.prepare import evaluation_dataset, prepare_data
    from kerascv_app.evaluate.metrics import predict_probabilities
    from kerascv_app.model_dir import open_model_directory

    config = Config.from_dict(read_json(ensemble_dir / "config.json"))
    prepared = prepare_data(config, None)
    model = open_model_directory(ensemble_dir).load_model()
    return predict_probabilities(model, evaluation_dataset(prepared, config, "test"))


def assert_complete_ensemble(ensemble_dir, members, method, tta=None):
    for name in (
        "ensemble.json",
        "metrics.json",
        "model.keras",
        "model.json",
        "config.json",
        "environment.json",
        "splits.json",
        "predictions/val.npz",
        "predictions/test.npz",
    ):
        assert (ensemble_dir / name).is_file(), name
    assert read_json(ensemble_dir / "model.json")["kind"] == "ensemble"
    record = read_json(ensemble_dir / "ensemble.json")
    assert record["method"] == method and record["tta"] == tta
    assert [member["name"] for member in record["members"]] == [member.name for member in members]
    metrics = read_json(ensemble_dir / "metrics.json")
    assert metrics["tta"] == tta
    if tta is None:
        # Without --tta the members are scored on the predictions their runs saved.
        for member, member_metrics in zip(members, metrics["members"]):
            assert member_metrics["test"]["accuracy"] == pytest.approx(
                read_json(member / "metrics.json")["test"]["accuracy"]
            )
    for scores in [metrics["test"], metrics["validation"], *(member["test"] for member in metrics["members"])]:
        assert (
            0.0 <= scores["accuracy"] <= 1.0
            and scores["loss"] > 0
            and 0.0 <= scores["expected_calibration_error"] <= 1.0
        )
    probabilities, labels = saved(ensemble_dir)
    assert metrics["test"]["accuracy"] == pytest.approx(float((probabilities.argmax(1) == labels).mean()))
    # The one Keras model gives the combination computed in NumPy / scikit-learn.
    exported, exported_labels = exported_model_probabilities(ensemble_dir)
    np.testing.assert_array_equal(exported_labels, labels)
    np.testing.assert_allclose(exported, probabilities, atol=AGREEMENT_TOLERANCE, rtol=0)
    return record, metrics, probabilities


def test_average_is_the_mean_of_member_probabilities(tmp_path, member_runs):
    out, _ = make_ensemble(tmp_path, member_runs, "--average")
    record, _, probabilities = assert_complete_ensemble(out, member_runs, "average")
    expected = np.mean([saved(member)[0] for member in member_runs], axis=0)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert record["weights"] == pytest.approx([1 / 3] * 3)


def test_weighted_weights_are_valid_and_minimise_validation_log_loss(tmp_path, member_runs):
    out, result = make_ensemble(tmp_path, member_runs, "--weighted")
    record, metrics, probabilities = assert_complete_ensemble(out, member_runs, "weighted")
    weights = np.array(record["weights"])
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0, abs=1e-9)
    assert "weights:" in result.stdout and member_runs[0].name in result.stdout
    expected = np.tensordot(weights, np.stack([saved(member)[0] for member in member_runs]), axes=1)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    # Fitted on validation: no worse there than the plain average (one of its choices).
    validation = np.stack([saved(member, "val.npz")[0] for member in member_runs])
    labels = saved(member_runs[0], "val.npz")[1]

    def log_loss(mixture):
        return -np.mean(np.log(np.maximum(mixture[np.arange(len(labels)), labels], 1e-12)))

    assert log_loss(np.tensordot(weights, validation, axes=1)) <= log_loss(validation.mean(axis=0)) + 1e-9
    assert metrics["validation"]["loss"] == pytest.approx(log_loss(np.tensordot(weights, validation, axes=1)), rel=1e-5)


def member_features(member_runs, split_file):
    """What the meta-learner sees, computed here: the members' log-probabilities side by side."""
    return np.log(np.maximum(np.concatenate([saved(member, split_file)[0] for member in member_runs], axis=1), 1e-6))


def scikit_learn_meta_learner(meta):
    """The meta-learner the README describes, built here from scikit-learn alone."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegressionCV, RidgeClassifierCV
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    if meta == "logistic":
        return LogisticRegressionCV(
            Cs=list(np.logspace(-3, 1, 5)),
            l1_ratios=(0.0,),
            cv=folds,
            scoring="neg_log_loss",
            max_iter=5000,
            use_legacy_attributes=False,
        )
    return CalibratedClassifierCV(
        RidgeClassifierCV(alphas=list(np.logspace(-1, 3, 5))), method="temperature", cv=folds, ensemble=False
    )


@pytest.mark.parametrize("meta", ["logistic", "ridge"])
def test_linear_stacking_matches_scikit_learn_and_evaluates(tmp_path, member_runs, meta):
    out, result = make_ensemble(tmp_path, member_runs, "--stacking", "--meta", meta)
    assert "note:" not in result.stdout
    record, metrics, probabilities = assert_complete_ensemble(out, member_runs, "stacking")
    assert record["meta_learner"] == meta and "out-of-fold" in metrics["validation_predictions"]
    # Different recipes over the same data and splits are one ensemble.
    assert [member["recipe"] for member in record["members"]] == ["digits", "digits", "digits_resnet"]
    assert [member["model"] for member in record["members"]] == ["seed_cnn", "seed_cnn", "resnet"]
    # The same meta-learner fitted here on the members' validation log-probabilities only.
    labels = saved(member_runs[0], "val.npz")[1]
    # One thread, as kcv ensemble fits it: BLAS threads on a busy CI machine cost minutes.
    # (Built first: the limit reaches only the libraries already loaded.)
    from threadpoolctl import threadpool_limits

    meta_learner = scikit_learn_meta_learner(meta)
    with threadpool_limits(limits=1):
        expected = meta_learner.fit(member_features(member_runs, "val.npz"), labels).predict_proba(
            member_features(member_runs, "test.npz")
        )
    np.testing.assert_allclose(probabilities, expected, atol=AGREEMENT_TOLERANCE)
    parameters = record["meta_learner_parameters"]
    assert np.array(parameters["kernel"]).shape == (3 * 10, 10) and len(parameters["bias"]) == 10
    assert set(record["regularisation"]) >= ({"C"} if meta == "logistic" else {"alpha", "inverse_temperature"})

    if meta == "logistic":
        evaluated = kcv_in_process("evaluate", out, "--json")
        assert evaluated.returncode == 0, evaluated.stderr
        assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    else:
        # Calibrated: better log-loss and calibration than a softmax of the ridge's raw scores.
        from sklearn.linear_model import RidgeClassifierCV

        from kerascv_app.evaluate.metrics import expected_calibration_error, softmax

        test_labels = saved(member_runs[0])[1]
        ridge = RidgeClassifierCV(alphas=list(np.logspace(-1, 3, 5))).fit(
            member_features(member_runs, "val.npz"), labels
        )
        raw = softmax(ridge.decision_function(member_features(member_runs, "test.npz")))
        raw_loss = -np.mean(np.log(raw[np.arange(len(test_labels)), test_labels]))
        assert metrics["test"]["loss"] < raw_loss
        assert metrics["test"]["expected_calibration_error"] < expected_calibration_error(raw, test_labels)


def test_gbm_stacking_keeps_the_scikit_learn_model_and_evaluate_says_why_not(tmp_path, member_runs):
    import joblib

    # Members whose errors differ by construction, so that gbm beats the weighted average out
    # of fold and is kept (with the trained members it can lose, and then falls back).
    members = synthetic_members(tmp_path, member_runs)
    out, result = make_ensemble(tmp_path, members, "--stacking", "--meta", "gbm")
    assert "no model.keras" in result.stdout, result.stdout
    assert not (out / "model.keras").exists() and not (out / "model.json").exists()
    meta_learner = joblib.load(out / "meta_learner.joblib")
    np.testing.assert_allclose(
        saved(out)[0], meta_learner.predict_proba(member_features(members, "test.npz")), atol=1e-6
    )
    assert_one_line_error(run_kcv("evaluate", out), "gbm", "no model.keras")


def test_tta_flip_model_matches_the_mirrored_predictions(tmp_path, member_runs):
    out, _ = make_ensemble(tmp_path, member_runs, "--average", "--tta", "flip")
    _, _, probabilities = assert_complete_ensemble(out, member_runs, "average", tta="flip")
    plain = np.mean([saved(member)[0] for member in member_runs], axis=0)
    # Digits are not mirror-symmetric: the mirrored half changes the predictions.
    assert np.abs(probabilities - plain).max() > 1e-4


def copy_run(source, destination, edit=None):
    """A copy of a member run, with records changed (one edit or a list): a member that differs."""
    shutil.copytree(source, destination)
    for file_name, change in [edit] if isinstance(edit, tuple) else edit or []:
        record = read_json(destination / file_name)
        change(record)
        (destination / file_name).write_text(json.dumps(record))
    return destination


def test_without_run_dirs_takes_the_runs_matching_the_newest(tmp_path, member_runs):
    runs = tmp_path / "runs"
    runs.mkdir()
    other_classes = copy_run(
        member_runs[0],
        runs / "digits-0-other-classes",
        ("model.json", lambda record: record.update(class_names=list("abcdefghij"))),
    )
    unfinished = copy_run(
        member_runs[0], runs / "digits-1-unfinished", ("run.json", lambda record: record.update(status="failed"))
    )
    copies = [copy_run(member, runs / member.name) for member in member_runs]
    # Oldest first: the doctored runs, then the members, the newest of which is the reference.
    for age, path in enumerate([other_classes, unfinished, *copies]):
        os.utime(path, (1_000_000 + age, 1_000_000 + age))
    result = run_kcv("ensemble", "--average", "--runs-dir", runs, "--out", tmp_path / "ensemble")
    assert result.returncode == 0, result.stderr
    record = read_json(tmp_path / "ensemble" / "ensemble.json")
    assert [member["name"] for member in record["members"]] == [member.name for member in member_runs]
    for member in member_runs:
        assert member.name in result.stdout
    assert "left out" in result.stdout and "digits-0-other-classes" in result.stdout
    assert unfinished.name not in result.stdout


def change_validation_split(record):
    record["validation_fingerprint"] = "0123456789abcdef"


def change_validation_fraction(record):
    record["data"]["val_fraction"] = 0.5


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (
            ("model.json", lambda record: record.update(class_names=list("abcdefghij"))),
            ["differs-member", "has classes"],
        ),
        (
            ("environment.json", lambda record: record.update(data_fingerprint="0123456789abcdef")),
            ["differs-member", "other data", "0123456789abcdef"],
        ),
        (("splits.json", change_validation_split), ["differs-member", "another validation split", "data.split_seed"]),
        (
            [("splits.json", change_validation_split), ("config.json", change_validation_fraction)],
            ["differs-member", "another validation split", f"data.val_fraction is 0.5, not {VALIDATION_FRACTION}"],
        ),
        (("run.json", lambda record: record.update(status="failed")), ["differs-member", "is failed, not finished"]),
        (("model.json", lambda record: record.update(image_size=[16, 16])), ["differs-member", "16x16x1"]),
    ],
    ids=["classes", "data", "splits", "splits-setting", "unfinished", "input-size"],
)
def test_a_member_that_differs_is_refused_by_name(tmp_path, member_runs, edit, fragments):
    differing = copy_run(member_runs[1], tmp_path / "differs-member", edit)
    # Refused before any model is loaded: in this process.
    result = kcv_in_process(
        "ensemble", member_runs[0], differing, member_runs[2], "--average", "--out", tmp_path / "ensembles" / "out"
    )
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "ensembles").exists()


@pytest.mark.parametrize(
    "arguments, fragments",
    [
        (["{0}", "--average"], ["at least 2 members"]),
        (["{0}", "{0}", "--average"], ["named twice"]),
        (["{0}", "{1}"], ["choose exactly one method"]),
        (["{0}", "{1}", "--average", "--weighted"], ["choose exactly one method", "--average, --weighted"]),
        (["{0}", "{1}", "--average", "--meta", "ridge"], ["--meta ridge applies to --stacking only"]),
        (["{0}", "{1}", "--average", "--out", "{0}"], ["already exists"]),
        (["--average", "--runs-dir", "{missing}"], ["does not exist"]),
    ],
    ids=["one-member", "twice", "no-method", "two-methods", "meta-without-stacking", "existing-out", "no-runs-folder"],
)
def test_bad_ensemble_input_is_one_line(tmp_path, member_runs, arguments, fragments):
    values = {"missing": tmp_path / "missing"}
    arguments = [argument.format(*member_runs, **values) for argument in arguments]
    if "--out" not in arguments:
        arguments += ["--out", str(tmp_path / "out")]
    result = kcv_in_process("ensemble", *arguments)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()
    # Nothing half-written beside the destination either.
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


# The combiners without the command line


@pytest.mark.backend_independent  # NumPy, SciPy and scikit-learn on arrays: no Keras backend
def test_fitted_weights_favour_the_better_member_and_stay_on_the_simplex():
    from kerascv_app.ensemble.combiners import fit_weights

    random = np.random.default_rng(0)
    labels = random.integers(0, 4, size=200)
    good = np.full((200, 4), 0.1)
    good[np.arange(200), labels] = 0.7
    noise = random.dirichlet(np.ones(4), size=200)
    weights = fit_weights([good, noise], labels)
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert weights[0] > 0.9


@pytest.mark.backend_independent  # NumPy, SciPy and scikit-learn on arrays: no Keras backend
@pytest.mark.parametrize("meta", ["logistic", "ridge"])
def test_two_class_linear_meta_learners_become_an_equivalent_linear_layer(meta):
    from kerascv_app.ensemble.combiners import linear_parameters, make_meta_learner, meta_learner_probabilities
    from kerascv_app.evaluate.metrics import softmax

    random = np.random.default_rng(1)
    features = random.random((60, 4))
    labels = (features[:, 0] + 0.2 * random.random(60) > 0.6).astype(int)
    meta_learner = make_meta_learner(meta).fit(features, labels)
    kernel, bias = linear_parameters(meta_learner, 2)
    assert kernel.shape == (4, 2)
    np.testing.assert_allclose(
        softmax(features @ kernel + bias), meta_learner_probabilities(meta_learner, features), atol=1e-12
    )


@pytest.mark.backend_independent  # NumPy, SciPy and scikit-learn on arrays: no Keras backend
def test_methods_the_validation_split_cannot_fit_are_refused_early():
    from kerascv_app.ensemble.combiners import check_fittable
    from kerascv_app.errors import UserError

    check_fittable("average", None, 3)
    for method in ("weighted", "stacking"):
        with pytest.raises(UserError, match="no validation split"):
            check_fittable(method, None, 3)


@pytest.mark.backend_independent  # NumPy, SciPy and scikit-learn on arrays: no Keras backend
def test_expected_calibration_error_of_sure_answers():
    from kerascv_app.evaluate.metrics import expected_calibration_error

    sure = np.eye(3)[[0, 1, 2, 0]]
    assert expected_calibration_error(sure, np.array([0, 1, 2, 0])) == pytest.approx(0.0)
    assert expected_calibration_error(sure, np.array([1, 2, 0, 1])) == pytest.approx(1.0)
    # Half right at 0.75 confidence: off by 0.25.
    hedged = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(hedged, np.array([0, 0, 1, 1])) == pytest.approx(0.25)


# Stacking that earns its place: members whose errors differ by construction


def members_that_err_differently(labels, num_classes=10, seed=0):
    """Three members' probabilities for ``labels``: each is right on most images but, on
    its own three classes (0-2, 3-5, 6-8), confidently swaps the true class with the next
    one of its three half the time. No member is good everywhere; together they are."""
    random = np.random.default_rng(seed)
    rows = np.arange(len(labels))
    members = []
    for member in range(3):
        weak = np.arange(3 * member, 3 * member + 3)
        logits = random.normal(0.0, 1.0, (len(labels), num_classes))
        logits[rows, labels] += 3.0
        confused = np.flatnonzero(np.isin(labels, weak) & (random.random(len(labels)) < 0.5))
        partner = 3 * member + (labels[confused] - 3 * member + 1) % 3
        logits[confused, labels[confused]], logits[confused, partner] = (
            logits[confused, partner],
            logits[confused, labels[confused]],
        )
        # Over-confident, as trained nets are.
        probabilities = np.exp(1.5 * logits)
        members.append(probabilities / probabilities.sum(axis=1, keepdims=True))
    return members


def log_loss(probabilities, labels):
    return float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels])))


def accuracy(probabilities, labels):
    return float((probabilities.argmax(axis=1) == labels).mean())


@pytest.mark.backend_independent  # NumPy, SciPy and scikit-learn on arrays: no Keras backend
@pytest.mark.parametrize("meta", ["logistic", "ridge"])
def test_stacking_beats_every_member_and_the_average_when_errors_differ(meta):
    from kerascv_app.ensemble.combiners import combine
    from kerascv_app.evaluate.metrics import expected_calibration_error

    random = np.random.default_rng(5)
    validation_labels, test_labels = random.integers(0, 10, 431), random.integers(0, 10, 360)
    validation, test = (
        members_that_err_differently(validation_labels, seed=1),
        members_that_err_differently(test_labels, seed=2),
    )
    stacked = combine("stacking", meta, validation, validation_labels, test)
    assert stacked.method == "stacking" and stacked.fallback is None
    average = combine("average", None, validation, validation_labels, test).test_probabilities
    probabilities = stacked.test_probabilities
    assert accuracy(probabilities, test_labels) > max(accuracy(member, test_labels) for member in test)
    assert log_loss(probabilities, test_labels) <= log_loss(average, test_labels)
    assert expected_calibration_error(probabilities, test_labels) <= expected_calibration_error(average, test_labels)


def calibrated_copies(count, seed):
    """One calibrated model (labels drawn from its probabilities) and two near-copies of it:
    nothing for a meta-learner to learn that the weighted average does not already have."""
    random = np.random.default_rng(seed)
    logits = random.normal(0.0, 1.5, (count, 10))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([random.choice(10, p=row) for row in probabilities])
    copies = [probabilities * np.exp(random.normal(0.0, 0.01, probabilities.shape)) for _ in range(3)]
    return [copy / copy.sum(axis=1, keepdims=True) for copy in copies], labels


@pytest.mark.backend_independent  # NumPy, SciPy and scikit-learn on arrays: no Keras backend
def test_stacking_that_does_not_beat_the_weighted_average_out_of_fold_falls_back_and_says_why():
    from kerascv_app.ensemble.combiners import combine, fit_weights, weighted_average

    (validation, labels), (test, _) = calibrated_copies(300, 1), calibrated_copies(200, 2)
    combination = combine("stacking", "logistic", validation, labels, test)
    assert combination.method == "weighted" and combination.requested == "stacking-logistic"
    assert "out-of-fold log-loss" in combination.fallback and "--weighted" in combination.fallback
    np.testing.assert_allclose(combination.test_probabilities, weighted_average(test, fit_weights(validation, labels)))
    assert combination.record(10)["fallback"] == combination.fallback


def write_synthetic_predictions(run_dir, split_file, probabilities, labels):
    """Replaces a run's saved predictions, in the format kcv fit writes."""
    class_names = np.array([str(index) for index in range(probabilities.shape[1])])
    np.savez_compressed(
        run_dir / "predictions" / split_file,
        probabilities=probabilities.astype(np.float32),
        labels=labels,
        class_names=class_names,
    )


def synthetic_members(tmp_path, member_runs, validation_images=None):
    """Copies of the member runs whose saved predictions err differently by construction
    (the real validation and test labels, synthetic probabilities); ``validation_images``
    keeps only that many validation images of each member."""
    copies = [copy_run(member, tmp_path / "members" / member.name) for member in member_runs]
    for split_file, seed in (("val.npz", 1), ("test.npz", 2)):
        labels = saved(member_runs[0], split_file)[1]
        if split_file == "val.npz" and validation_images:
            labels = labels[:validation_images]
        for copy, probabilities in zip(copies, members_that_err_differently(labels, seed=seed)):
            write_synthetic_predictions(copy, split_file, probabilities, labels)
    return copies


def test_kcv_ensemble_stacking_beats_its_members_on_synthetic_run_directories(tmp_path, member_runs):
    members = synthetic_members(tmp_path, member_runs)
    out, result = make_ensemble(tmp_path, members, "--stacking")
    assert "note:" not in result.stdout
    metrics = read_json(out / "metrics.json")
    assert metrics["method"] == "stacking-logistic"
    test_labels = saved(members[0])[1]
    average = np.mean([saved(member)[0] for member in members], axis=0)
    assert metrics["test"]["accuracy"] > max(member["test"]["accuracy"] for member in metrics["members"])
    assert metrics["test"]["loss"] <= log_loss(average, test_labels)


def test_kcv_ensemble_on_a_tiny_validation_split_falls_back_to_the_weighted_average_and_says_so(tmp_path, member_runs):
    # 30 validation images: 3 or so of each class, under the 10 stacking needs.
    members = synthetic_members(tmp_path, member_runs, validation_images=30)
    out, result = make_ensemble(tmp_path, members, "--stacking")
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    assert (
        len(notes) == 1
        and "needs at least 10 of every class (100 images for 10 classes" in notes[0]
        and "--weighted" in notes[0]
    ), result.stdout
    record = read_json(out / "ensemble.json")
    assert record["method"] == "weighted" and record["requested"] == "stacking-logistic" and len(record["weights"]) == 3
    assert read_json(out / "metrics.json")["fallback"] == record["fallback"]
    # The fallen-back ensemble is a complete one: its model.keras holds the weighted average.
    assert (out / "model.keras").is_file()


# Damaged member predictions


@pytest.mark.parametrize("split_file", ["val.npz", "test.npz"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong-arrays"])
def test_damaged_saved_predictions_are_one_line_naming_the_file(tmp_path, member_runs, split_file, damage):
    from kerascv_app.ensemble.members import open_member
    from kerascv_app.errors import UserError

    copy = copy_run(member_runs[1], tmp_path / "damaged")
    path = copy / "predictions" / split_file
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a numpy archive" * 10)
    else:
        np.savez(path, something_else=np.zeros(3))
    with pytest.raises(UserError, match="corrupt or truncated") as raised:
        open_member(copy).saved_predictions("validation" if split_file == "val.npz" else "test")
    assert str(path) in str(raised.value) and "kcv fit" in str(raised.value)


def test_kcv_ensemble_with_a_truncated_member_prediction_file_is_one_line(tmp_path, member_runs):
    copy = copy_run(member_runs[1], tmp_path / "truncated-member")
    path = copy / "predictions" / "val.npz"
    path.write_bytes(path.read_bytes()[:100])
    result = kcv_in_process("ensemble", member_runs[0], copy, "--stacking", "--out", tmp_path / "ensembles" / "out")
    assert_one_line_error(result, str(path), "corrupt or truncated", "kcv fit")
    assert not (tmp_path / "ensembles").exists() or not any((tmp_path / "ensembles").iterdir())
