"""Fidelity and accuracy measures on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from edgeserve.errors import ConfigError
from edgeserve.fidelity import accuracy, compare_output, compare_outputs, cosine_per_row, label_error, percentiles


def test_cosine_known_values() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [-2.0, 0.0]])
    np.testing.assert_allclose(cosine_per_row(a, b), [1.0, np.sqrt(0.5), 1.0, -1.0])


def test_tiny_rows_are_compared_by_their_direction() -> None:
    tiny = np.full((2, 4096), 1e-9)  # a text detector's map of a photo without text
    tiny[1, :2048] = 2e-9
    np.testing.assert_allclose(cosine_per_row(tiny, tiny), [1.0, 1.0])
    assert cosine_per_row(tiny[:1], -tiny[:1])[0] == pytest.approx(-1.0)
    assert cosine_per_row(np.zeros((1, 3)), np.ones((1, 3)))[0] == 0.0


def test_non_finite_rows_never_look_close() -> None:
    a = np.array([[np.nan, 1.0], [1.0, 1.0]])
    b = np.array([[1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_per_row(a, b), [-1.0, 1.0])
    assert compare_output(a, b)["non_finite"] == 0.25


def test_top1_agreement_and_errors() -> None:
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    cand = ref.copy()
    cand[0] = [0.9, 0.1]
    m = compare_output(cand, ref)
    assert m["top1_agreement"] == 0.75
    assert m["max_abs_error"] == pytest.approx(0.8)
    assert m["max_rel_error"] == pytest.approx(0.8 / 0.9)
    assert m["mean_rel_error"] == pytest.approx(0.2 / 0.9)


def test_the_mean_relative_error_never_reads_above_the_largest() -> None:
    """An output of mostly small values, with the error spread over them (a decoder's logits, near zero but for a
    few): both errors are relative to the same scale."""
    ref = np.zeros((4, 100), np.float32)
    ref[:, 0] = 10.0
    cand = ref + np.float32(0.01)
    cand[:, 0] = 10.0
    m = compare_output(cand, ref)
    assert m["mean_rel_error"] <= m["max_rel_error"] == pytest.approx(0.001)


def test_integer_outputs_measure_agreement() -> None:
    assert compare_output(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == {"agreement": 0.75}


def test_summary_takes_the_worst_case() -> None:
    ref = {"a": np.ones((2, 3), np.float32), "b": np.eye(2, dtype=np.float32)}
    cand = {"a": np.ones((2, 3), np.float32), "b": np.array([[1, 0], [1, 0]], np.float32)}
    s = compare_outputs(cand, ref)["summary"]
    assert s["cosine_min"] == pytest.approx(0.0) and s["top1_agreement"] == 0.5


def test_accuracy_from_labels_or_scores() -> None:
    labels = np.array([0, 1, 1, 0])
    assert accuracy({"label": np.array([0, 1, 0, 0])}, labels) == 0.75
    assert accuracy({"scores": np.array([[1, 0], [0, 1], [0, 1], [0, 1]], np.float32)}, labels) == 0.75
    assert accuracy({"embedding": np.ones((4, 1, 3), np.float32)}, labels) is None


def test_a_binary_classifiers_one_probability_a_row_is_read_at_one_half_against_0_1_labels() -> None:
    """A sigmoid's [rows, 1] (Keras' binary classifier) had no class to compare: no accuracy at all."""
    labels = np.array([0, 1, 1, 0])
    assert accuracy({"p": np.array([[0.1], [0.9], [0.4], [0.2]], np.float32)}, labels) == 0.75
    assert accuracy({"p": np.array([0.1, 0.9, 0.6, 0.2], np.float32)}, labels) == 1.0
    assert accuracy({"p": np.array([0.1, 0.9, 0.6, 0.2], np.float32)}, np.array([0, 2, 1, 0])) is None  # not 0/1
    assert accuracy({"score": np.array([-3.0, 2.0, 1.0, -1.0], np.float32)}, labels) is None  # not probabilities
    assert accuracy({"a": np.full(4, 0.5, np.float32), "b": np.full(4, 0.5, np.float32)}, labels) is None


def test_accuracy_against_class_names_reads_the_models_label_output_of_names() -> None:
    """A scikit-learn classifier fit on class names answers names: compared with the argmax of its probabilities,
    fp32 and every candidate scored 0 and an accuracy budget held for anything."""
    names = np.array(["cat", "dog", "dog", "cat"])
    scores = np.array([[1, 0], [0, 1], [0, 1], [0, 1]], np.float32)
    answers = {"label": np.array(["cat", "dog", "cat", "cat"], dtype=object), "probabilities": scores}
    assert accuracy(answers, names) == 0.75
    assert accuracy({"label": answers["label"].astype("U3"), "probabilities": scores}, names.astype(object)) == 0.75
    with pytest.raises(ConfigError, match=r"the labels are class names \('cat', 'dog'\), but the model answers class "
                                          r"indexes: give the labels as the indexes of its classes"):
        accuracy({"label": np.array([0, 1, 0, 0]), "probabilities": scores}, names)
    with pytest.raises(ConfigError, match=r"none of the labels \('a', 'b'\) is a class the model answers "
                                          r"\('cat', 'dog'\)"):
        accuracy(answers, np.array(["a", "b", "b", "a"]))
    assert accuracy({"embedding": np.ones((4, 1, 3), np.float32)}, names) is None


def test_a_classifier_fit_on_class_names_is_held_to_its_accuracy(tmp_path) -> None:
    """End to end through skl2onnx: the accuracy recorded is the model's, not 0 for fp32 and converted alike."""
    onnx = pytest.importorskip("onnx")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import edgeserve

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    onnx.save(skl2onnx.to_onnx(LogisticRegression(max_iter=500).fit(x, names), x[:1]), str(tmp_path / "iris.onnx"))
    pkg = edgeserve.convert(tmp_path / "iris.onnx", tmp_path / "pkg", quantize="dynamic", calibration={"X": x[::2]},
                            eval_data={"X": x[1::2], "names": names[1::2]}, labels="names")
    acc = pkg.manifest.fidelity["accuracy"]
    assert acc["fp32"] > 0.9 and acc["converted"] > 0.9


def test_labels_fp32_gets_no_more_right_than_chance_do_not_judge_alone(tmp_path) -> None:
    """Labels of other rows (here: the iris labels reversed) leave fp32 at chance, and every result within a point of
    that: a static int8 ViT at a cosine of 0.82 to fp32 passed. The inferred task metric now judges beside them;
    the same model with its own labels is judged by them alone."""
    onnx = pytest.importorskip("onnx")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import edgeserve

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    model = skl2onnx.to_onnx(LogisticRegression(max_iter=500).fit(x, y), x[:1], options={"zipmap": False})
    onnx.save(model, str(tmp_path / "iris.onnx"))
    held = {"X": x[1::2]}
    wrong = edgeserve.convert(tmp_path / "iris.onnx", tmp_path / "wrong", quantize="none", calibration={"X": x[::2]},
                              eval_data={**held, "y": y[1::2][::-1]}, labels="y")
    budget = wrong.manifest.fidelity["budget"]
    assert budget["because"].startswith("inferred: labels given, but fp32 gets 0.")
    assert "no better than always answering the most common one (0.3333)" in budget["because"]
    assert [t["metric"] for t in budget["targets"]] == ["top1,output=probabilities", "prob-change,output=probabilities"]
    assert budget["max_accuracy_drop"] == 0.01
    right = edgeserve.convert(tmp_path / "iris.onnx", tmp_path / "right", quantize="none", calibration={"X": x[::2]},
                              eval_data={**held, "y": y[1::2]}, labels="y")
    assert right.manifest.fidelity["budget"]["targets"] == []
    assert right.manifest.fidelity["budget"]["because"] == "labels given: at most one point of accuracy lost"
    named = edgeserve.convert(tmp_path / "iris.onnx", tmp_path / "named", quantize="none", calibration={"X": x[::2]},
                              eval_data={**held, "y": y[1::2][::-1]}, labels="y", max_accuracy_drop=0.02)
    assert named.manifest.fidelity["budget"]["targets"] == []  # the user's budget, kept, and said to be blind:
    assert "no better than always answering the most common one" in named.manifest.recipe["labels_at_chance"]


def test_percentiles() -> None:
    p = percentiles(list(range(1, 101)))
    assert p["p50"] == pytest.approx(50.5) and p["p90"] == pytest.approx(90.1) and p["p99"] == pytest.approx(99.01)


def test_a_budget_says_when_answers_are_non_finite() -> None:
    from edgeserve.fidelity import make_budget

    reference = {"scores": np.tile(np.array([[3.0, 1.0, 0.5]], np.float32), (6, 1))}  # class 0 on every row
    broken = {"scores": np.full((6, 3), np.nan, np.float32)}
    broken["scores"][:2] = reference["scores"][:2]
    verdict = make_budget(["top1>=0.99"]).judge(reference, broken, {})
    assert not verdict.ok
    assert verdict.shortfall == float("inf")  # no node exclusion repairs an engine overflow
    assert verdict.missed[0] == ("output 'scores' is NaN or infinite in 4 of 6 rows where fp32 is finite (the engine "
                              "overflowed; a quantised range may not fit the values)")
    nan_where_fp32_is_nan = {"scores": reference["scores"].copy()}
    nan_where_fp32_is_nan["scores"][0, 1] = np.nan
    assert make_budget(["top1>=0.99"]).judge(nan_where_fp32_is_nan, nan_where_fp32_is_nan, {}).ok


def test_a_regressors_targets_given_as_labels_are_its_error_not_an_accuracy(tmp_path) -> None:
    """Labels were read as classes whatever they held: a regressor's targets gave no accuracy, every candidate
    missed with 'accuracy unknown (no labels)', and auto could never choose. Now the inferred metric judges, the
    RMSE against the targets is recorded, and an accuracy budget is refused at once, saying what fits."""
    import warnings

    onnx = pytest.importorskip("onnx")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_diabetes
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import edgeserve

    x, y = load_diabetes(return_X_y=True)
    x, y = x.astype(np.float32), (y + 1000).astype(np.float32)  # an offset, as prices and kelvins have
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(32,), max_iter=1000,
                                                              learning_rate_init=0.05, random_state=0)).fit(x, y)
    onnx.save(skl2onnx.to_onnx(fitted, x[:1]), str(tmp_path / "reg.onnx"))
    data = {"X": x[300:], "target": y[300:]}
    pkg = edgeserve.convert(tmp_path / "reg.onnx", tmp_path / "pkg", quantize="dynamic", calibration={"X": x[:300]},
                            eval_data=data, labels="target")
    fidelity = pkg.manifest.fidelity
    assert [t["metric"] for t in fidelity["budget"]["targets"]] == ["nrmse,output=variable"]
    assert "accuracy" not in fidelity
    rmse = fidelity["label_rmse"]
    assert rmse["fp32"] == pytest.approx(label_error({"v": edgeserve.load(tmp_path / "reg.onnx").predict(x[300:])["variable"]},
                                                     y[300:]), rel=1e-5)
    assert 0 < rmse["fp32"] < np.std(y[300:]) * 2 and rmse["converted"] > 0
    with pytest.raises(ConfigError, match=r"max_accuracy_drop needs an output that predicts a class .* this model "
                                          r"answers variable float32 .*--metric 'nrmse<=0.1'"):
        edgeserve.convert(tmp_path / "reg.onnx", tmp_path / "pkg2", quantize="dynamic", calibration={"X": x[:300]},
                          eval_data=data, labels="target", max_accuracy_drop=0.01)
    assert label_error({"v": np.array([1.0, 2.0])}, np.array([1.0, 4.0])) == pytest.approx(np.sqrt(2))
    assert label_error({"v": np.array([1.0, 2.0])}, np.array(["a", "b"])) is None
    assert label_error({"v": np.ones(2), "w": np.ones(2)}, np.ones(2)) is None  # which one: not guessed


def test_one_hot_labels_are_read_as_class_indexes_and_other_shapes_are_refused(tmp_path) -> None:
    """Keras users keep labels one-hot: flattened, they were N*C labels for N rows."""
    import edgeserve
    from edgeserve.errors import DataError
    from tests.factories import mlp_model, rows, save

    save(mlp_model(), tmp_path / "mlp.onnx")
    x = rows(40)
    with edgeserve.load(tmp_path / "mlp.onnx") as m:
        classes = next(v for v in m.predict(x).values() if v.ndim == 2).argmax(1)
    one_hot = np.eye(int(classes.max()) + 2, dtype=np.float32)[classes]
    pkg = edgeserve.convert(tmp_path / "mlp.onnx", tmp_path / "pkg", quantize="none", calibration={"x": x},
                            eval_data={"x": x, "y": one_hot}, labels="y")
    assert pkg.manifest.fidelity["accuracy"]["fp32"] == 1.0
    with pytest.raises(DataError, match=r"labels 'y' are shaped \[40, 2, 2\]: give one label a row"):
        edgeserve.convert(tmp_path / "mlp.onnx", tmp_path / "pkg2", quantize="none", calibration={"x": x},
                          eval_data={"x": x, "y": np.zeros((40, 2, 2))}, labels="y")
