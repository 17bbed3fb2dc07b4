"""kcv ensemble on the backend under test: each method, the exported model's agreement with
the NumPy / scikit-learn combination, valid weights, refused members, kcv evaluate.

The members are three tiny digits runs made once per session. They differ in their
training seed and fc1 size, and share their splits, which follow data.split_seed.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from kcv_testing import REPO_ROOT, assert_one_line_error, run_kcv

DIGITS = REPO_ROOT / "recipes" / "digits.py"
MEMBER_HIDDEN_UNITS = (16, 32, 64)
AGREEMENT_TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def member_runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ensemble_members") / "runs"
    for seed, hidden_units in enumerate(MEMBER_HIDDEN_UNITS):
        result = run_kcv(
            "fit", DIGITS, "--smoke", "--quiet", "--runs-dir", runs, "--seed", str(seed),
            "--set", f"model.hidden_units={hidden_units}", "--set", "train.epochs=2",
        )
        assert result.returncode == 0, result.stderr
    # Run names start with a timestamp (and a suffix within the same second): oldest first.
    members = sorted(runs.iterdir())
    assert len(members) == len(MEMBER_HIDDEN_UNITS)
    return members


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
    for name in ("ensemble.json", "metrics.json", "model.keras", "model.json", "config.json", "environment.json", "splits.json", "predictions/val.npz", "predictions/test.npz"):
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
            assert member_metrics["test"]["accuracy"] == pytest.approx(read_json(member / "metrics.json")["test"]["accuracy"])
    for scores in [metrics["test"], metrics["validation"], *(member["test"] for member in metrics["members"])]:
        assert 0.0 <= scores["accuracy"] <= 1.0 and scores["loss"] > 0 and 0.0 <= scores["expected_calibration_error"] <= 1.0
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


@pytest.mark.parametrize("meta", ["logistic", "ridge"])
def test_linear_stacking_matches_scikit_learn_and_evaluates(tmp_path, member_runs, meta):
    from sklearn.linear_model import LogisticRegression, RidgeClassifier

    from kerascv_app.ensemble.combiners import scores_to_probabilities

    out, _ = make_ensemble(tmp_path, member_runs, "--stacking", "--meta", meta)
    record, metrics, probabilities = assert_complete_ensemble(out, member_runs, "stacking")
    assert record["meta_learner"] == meta and "out-of-fold" in metrics["validation_predictions"]
    # The same meta-learner fitted here on the members' validation probabilities only.
    features = {name: np.concatenate([saved(member, f"{name}.npz")[0] for member in member_runs], axis=1) for name in ("val", "test")}
    labels = saved(member_runs[0], "val.npz")[1]
    if meta == "logistic":
        expected = LogisticRegression(max_iter=5000).fit(features["val"], labels).predict_proba(features["test"])
    else:
        expected = scores_to_probabilities(RidgeClassifier().fit(features["val"], labels).decision_function(features["test"]))
    np.testing.assert_allclose(probabilities, expected, atol=AGREEMENT_TOLERANCE)
    parameters = record["meta_learner_parameters"]
    assert np.array(parameters["kernel"]).shape == (3 * 10, 10) and len(parameters["bias"]) == 10

    if meta == "logistic":
        evaluated = run_kcv("evaluate", out, "--json")
        assert evaluated.returncode == 0, evaluated.stderr
        assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)


def test_gbm_stacking_keeps_the_scikit_learn_model_and_evaluate_says_why_not(tmp_path, member_runs):
    import joblib

    out, result = make_ensemble(tmp_path, member_runs, "--stacking", "--meta", "gbm")
    assert "no model.keras" in result.stdout
    assert not (out / "model.keras").exists() and not (out / "model.json").exists()
    meta_learner = joblib.load(out / "meta_learner.joblib")
    features = np.concatenate([saved(member)[0] for member in member_runs], axis=1)
    np.testing.assert_allclose(saved(out)[0], meta_learner.predict_proba(features), atol=1e-6)
    assert_one_line_error(run_kcv("evaluate", out), "gbm", "no model.keras")


def test_tta_flip_model_matches_the_mirrored_predictions(tmp_path, member_runs):
    out, _ = make_ensemble(tmp_path, member_runs, "--average", "--tta", "flip")
    _, _, probabilities = assert_complete_ensemble(out, member_runs, "average", tta="flip")
    plain = np.mean([saved(member)[0] for member in member_runs], axis=0)
    # Digits are not mirror-symmetric: the mirrored half changes the predictions.
    assert np.abs(probabilities - plain).max() > 1e-4


def copy_run(source, destination, edit=None):
    """A copy of a member run, with one record changed: a member that differs."""
    shutil.copytree(source, destination)
    if edit:
        file_name, change = edit
        record = read_json(destination / file_name)
        change(record)
        (destination / file_name).write_text(json.dumps(record))
    return destination


def test_without_run_dirs_takes_the_runs_matching_the_newest(tmp_path, member_runs):
    runs = tmp_path / "runs"
    runs.mkdir()
    other_classes = copy_run(member_runs[0], runs / "digits-0-other-classes", ("model.json", lambda record: record.update(class_names=list("abcdefghij"))))
    unfinished = copy_run(member_runs[0], runs / "digits-1-unfinished", ("run.json", lambda record: record.update(status="failed")))
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


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (("model.json", lambda record: record.update(class_names=list("abcdefghij"))), ["differs-member", "has classes"]),
        (("environment.json", lambda record: record.update(data_fingerprint="0123456789abcdef")), ["differs-member", "other data", "0123456789abcdef"]),
        (("splits.json", change_validation_split), ["differs-member", "another validation split", "data.split_seed"]),
        (("run.json", lambda record: record.update(status="failed")), ["differs-member", "is failed, not finished"]),
        (("model.json", lambda record: record.update(image_size=[16, 16])), ["differs-member", "16x16x1"]),
    ],
    ids=["classes", "data", "splits", "unfinished", "input-size"],
)
def test_a_member_that_differs_is_refused_by_name(tmp_path, member_runs, edit, fragments):
    differing = copy_run(member_runs[1], tmp_path / "differs-member", edit)
    result = run_kcv("ensemble", member_runs[0], differing, member_runs[2], "--average", "--out", tmp_path / "ensembles" / "out")
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
    result = run_kcv("ensemble", *arguments)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()
    # Nothing half-written beside the destination either.
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


# The combiners without the command line


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
    np.testing.assert_allclose(softmax(features @ kernel + bias), meta_learner_probabilities(meta_learner, features), atol=1e-12)


def test_methods_the_validation_split_cannot_fit_are_refused_early():
    from kerascv_app.ensemble.combiners import check_fittable
    from kerascv_app.errors import UserError

    check_fittable("average", None, 3)
    with pytest.raises(UserError, match="no validation split"):
        check_fittable("weighted", None, 3)
    with pytest.raises(UserError, match=r"no image of class indices \[2\]"):
        check_fittable("stacking", np.array([0, 0, 1, 1]), 3)
    with pytest.raises(UserError, match="only 1 image"):
        check_fittable("stacking", np.array([0, 0, 1, 2, 2]), 3)


def test_expected_calibration_error_of_sure_answers():
    from kerascv_app.ensemble.build import expected_calibration_error

    sure = np.eye(3)[[0, 1, 2, 0]]
    assert expected_calibration_error(sure, np.array([0, 1, 2, 0])) == pytest.approx(0.0)
    assert expected_calibration_error(sure, np.array([1, 2, 0, 1])) == pytest.approx(1.0)
    # Half right at 0.75 confidence: off by 0.25.
    hedged = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(hedged, np.array([0, 0, 1, 1])) == pytest.approx(0.25)
