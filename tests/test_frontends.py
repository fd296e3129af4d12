"""The torch and scikit-learn front ends, checked against the framework's own predictions."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import edgeserve
from edgeserve import ConversionError

torch = pytest.importorskip("torch")
sklearn = pytest.importorskip("sklearn")


class _TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU())
        self.cls = torch.nn.Linear(16, 3)
        self.reg = torch.nn.Linear(16, 1)

    def forward(self, x):
        h = self.body(x)
        return self.cls(h), self.reg(h)


def test_torch_module_with_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _TwoHeads().eval()
    example = torch.randn(2, 8)
    pkg = edgeserve.convert(net, tmp_path / "pkg", example_inputs=example, output_names=["scores", "value"])
    m = pkg.manifest
    assert m.source["framework"] == "torch" and m.source["class"].endswith("_TwoHeads")
    assert [o.name for o in m.outputs] == ["scores", "value"]
    assert m.inputs[0].name == "x" and m.inputs[0].batch_axis == 0  # named after forward's parameter
    x = np.random.default_rng(0).standard_normal((7, 8)).astype(np.float32)  # another batch size than exported
    with torch.no_grad():
        scores, value = (t.numpy() for t in net(torch.from_numpy(x)))
    with edgeserve.load(pkg.path) as model:
        out = model.predict(x)
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["value"], value, rtol=1e-4, atol=1e-5)


def test_dynamic_axes_without_a_batch_axis_are_warned_about_and_the_data_error_says_how_to_fix_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``dynamic_axes={"x": {1: "width"}}`` (torch's form lists the batch's axis too) exported the model at the
    example's 2 rows; the calibration data then failed with ``got [1, 40, 8]``, a shape nobody gave."""
    from edgeserve.errors import DataError

    class Sum(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(dim=1, keepdim=True) * 2

    rows = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    with caplog.at_level("WARNING"), pytest.raises(DataError) as caught:
        edgeserve.convert(Sum(), tmp_path / "pkg", example_inputs=torch.randn(2, 8), input_names=["x"],
                          dynamic_axes={"x": {1: "width"}}, calibration={"x": rows})
    assert "dynamic_axes makes no batch axis of 'x' (2 rows)" in caplog.text
    assert str(caught.value).startswith("calibration data: input 'x' has no batch axis: the model takes exactly "
                                        "float32 [2, width] a call, got [40, 8] (dimension 0 must be 2)")
    assert "dynamic_axes={'x': {0: 'batch', ...}}" in str(caught.value)
    caplog.clear()
    with caplog.at_level("WARNING"):
        pkg = edgeserve.convert(Sum(), tmp_path / "fine", example_inputs=torch.randn(2, 8), input_names=["x"],
                                dynamic_axes={"x": {0: "batch", 1: "width"}}, calibration={"x": rows})
    assert "no batch axis" not in caplog.text and pkg.manifest.inputs[0].shape == ("batch", "width")


def test_torch_needs_example_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="needs example_inputs"):
        edgeserve.convert(_TwoHeads(), tmp_path / "pkg")


def test_torch_export_failure_is_clear(tmp_path: Path) -> None:
    class Histogram(torch.nn.Module):
        def forward(self, x):
            return torch.histc(x, bins=4)  # neither exporter has it

    with pytest.raises(ConversionError, match=r"torch.onnx.export failed for Histogram: .*'aten::histc'.*; with "
                                              r"dynamo=True .*Export the model to ONNX yourself") as caught:
        edgeserve.convert(Histogram(), tmp_path / "pkg", example_inputs=torch.randn(2, 3))
    assert "\x1b[" not in str(caught.value)
    assert not (tmp_path / "pkg").exists()


class _Differences(torch.nn.Module):
    def forward(self, x):
        return torch.diff(x, dim=1) * 2


class _Spectrum(torch.nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x).abs()


@pytest.mark.parametrize("module,expected", [(_Differences, lambda x: np.diff(x, axis=1) * 2),
                                             (_Spectrum, lambda x: np.abs(np.fft.rfft(x)))], ids=["diff", "rfft"])
def test_a_module_the_torchscript_exporter_cannot_trace_is_exported_with_torch_export(tmp_path: Path, module,
                                                                                     expected) -> None:
    """``torch.diff`` and FFTs have no TorchScript symbolic: the exporter that builds on ``torch.export`` takes
    over (at its own opset 18: converted down to 17 the FFT's graph was invalid), keeps the batch dynamic, and the
    package says which one wrote it."""
    pkg = edgeserve.convert(module(), tmp_path / "pkg", example_inputs=torch.randn(3, 8), quantize="none")
    assert pkg.manifest.source["exporter"] == "torch.export" and pkg.manifest.source["opset"] == 18
    x = (np.arange(40, dtype=np.float32).reshape(5, 8) ** 2) / 10
    with edgeserve.load(pkg.path) as model:
        np.testing.assert_allclose(model.predict(x)["output"], expected(x), rtol=1e-5, atol=1e-4)


def test_a_cache_object_beside_the_tensors_of_a_dict_answer_is_left_out(tmp_path: Path) -> None:
    """A transformers model answers ``logits`` with ``past_key_values`` (a cache object no exporter traces): the
    package's outputs are the tensors (the export failed on the cache)."""
    class Cache:
        pass

    class WithCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return {"logits": self.lin(x), "past_key_values": Cache(), "hidden": x * 2, "attentions": None}

    pkg = edgeserve.convert(WithCache(), tmp_path / "pkg", example_inputs={"x": torch.randn(2, 4)}, quantize="none")
    assert [o.name for o in pkg.manifest.outputs] == ["logits", "hidden"]
    assert pkg.manifest.source["exporter"] == "torchscript"


def test_sklearn_pipeline(tmp_path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_iris(return_X_y=True)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    pkg = edgeserve.convert(clf, tmp_path / "pkg", example_inputs=x[:4], quantize="dynamic")
    assert pkg.manifest.source["framework"] == "sklearn"
    with edgeserve.load(pkg.path) as model:
        out = model.predict(x.astype(np.float32))
    labels = next(v for v in out.values() if v.dtype == np.int64)
    probs = next(v for v in out.values() if v.dtype == np.float32)
    assert np.mean(labels == clf.predict(x)) > 0.97
    np.testing.assert_allclose(probs, clf.predict_proba(x), atol=0.05)


def test_sklearn_needs_2d_examples(tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression

    reg = LinearRegression().fit(np.ones((4, 2)), np.ones(4))
    with pytest.raises(edgeserve.DataError, match="must be 2-D"):
        edgeserve.convert(reg, tmp_path / "pkg", example_inputs=np.ones(2))
    with pytest.raises(ConversionError, match="needs example_inputs"):
        edgeserve.convert(reg, tmp_path / "pkg")


@pytest.mark.parametrize("given", ["array", "npz"])
def test_a_sklearn_model_takes_its_example_rows_from_the_calibration_data(tmp_path: Path, given: str) -> None:
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    reg = LinearRegression().fit(x, x @ np.array([1.0, -2.0, 0.5]))
    np.savez(tmp_path / "cal.npz", X=x)
    calibration = x if given == "array" else tmp_path / "cal.npz"
    pkg = edgeserve.convert(reg, tmp_path / "pkg", calibration=calibration, quantize="none")
    assert [s.shape[1] for s in pkg.manifest.inputs] == [3]
    with edgeserve.load(pkg.path) as model:
        out = next(iter(model.predict(x[:5]).values()))
    np.testing.assert_allclose(out.ravel(), reg.predict(x[:5]), atol=1e-4)


@pytest.mark.parametrize("labels", ["ints", "strings"])
def test_an_onnx_file_with_skl2onnx_zipmap_answers_probabilities(tmp_path: Path, labels: str) -> None:
    """skl2onnx's default classifier output is a sequence of {class: probability} maps, which numpy cannot hold:
    the converter answers the probabilities the map was made from; loading the raw file says what to do."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    names = np.array(["setosa", "versicolor", "virginica"])
    clf = LogisticRegression(max_iter=500).fit(x, y if labels == "ints" else names[y])
    path = tmp_path / "zip.onnx"
    path.write_bytes(to_onnx(clf, x[:1]).SerializeToString())
    with pytest.raises(edgeserve.ModelFileError, match=r"ZipMap.*edgeserve convert"):
        edgeserve.load(path)
    pkg = edgeserve.convert(path, tmp_path / "pkg", quantize="none", calibration={"X": x})
    assert list(pkg.manifest.source["zipmap_removed"]["output_probability"]) == list(clf.classes_)
    with edgeserve.load(pkg.path) as model:
        out = model.predict({"X": x[:5]})
    np.testing.assert_allclose(out["output_probability"], clf.predict_proba(x[:5]), rtol=1e-4, atol=1e-5)
    assert list(out["output_label"]) == list(clf.predict(x[:5]))


class _Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, input_ids, attention_mask):
        return self.proj(self.emb(input_ids)) * attention_mask.unsqueeze(-1).float()


def test_torch_inputs_are_named_after_forwards_parameters(tmp_path: Path) -> None:
    """Without input_names, the inputs take forward's parameter names (as torch's newer exporter names them), so
    calibration files use the model's own words and a mask is recognised when the task metric is inferred."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (64, 10)).astype(np.int64)
    mask = (np.arange(10)[None] < rng.integers(3, 11, (64, 1))).astype(np.int64)
    pkg = edgeserve.convert(_Encoder().eval(), tmp_path / "pkg", example_inputs=(torch.from_numpy(ids[:2]),
                                                                               torch.from_numpy(mask[:2])),
                            quantize="dynamic", calibration={"input_ids": ids, "attention_mask": mask})
    assert [s.name for s in pkg.manifest.inputs] == ["input_ids", "attention_mask"]
    judged = pkg.manifest.fidelity["budget"]["targets"][0]["metric"]
    assert judged.startswith("pooled-cosine") and "mask=attention_mask" in judged, judged


class _Classifier(torch.nn.Module):
    """Like a transformers model: keyword inputs (type ids optional), a dict-like answer with a None entry."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        self.types = torch.nn.Embedding(2, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        h = self.emb(input_ids) + (0 if token_type_ids is None else self.types(token_type_ids))
        m = attention_mask.unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1)
        return {"loss": None, "logits": self.head(pooled), "pooled": pooled}


def test_named_example_inputs_go_in_by_name_and_a_dict_answer_names_the_outputs(tmp_path: Path) -> None:
    """A dict of example inputs in another order than forward's parameters must not feed token_type_ids as the
    mask; the answer's keys name the outputs (so 'logits' is judged as class scores); token ids get a variable
    sequence axis, since requests come at other lengths than the example's."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 50, (80, 12)).astype(np.int64)
    mask = (np.arange(12)[None] < rng.integers(3, 13, (80, 1))).astype(np.int64)
    types = (np.arange(12)[None] >= 6).astype(np.int64).repeat(80, 0)
    data = {"token_type_ids": types, "attention_mask": mask, "input_ids": ids}  # not forward's order
    module = _Classifier().eval()
    pkg = edgeserve.convert(module, tmp_path / "pkg", example_inputs={k: v[:2] for k, v in data.items()},
                            quantize="none", calibration=data)
    assert [s.name for s in pkg.manifest.outputs] == ["logits", "pooled"]
    assert all(s.shape == ("batch", "sequence") for s in pkg.manifest.inputs)
    assert pkg.manifest.fidelity["budget"]["targets"][0]["metric"] == "top1,output=logits"
    short = {k: v[:4, :7] for k, v in data.items()}  # another length than the example's 12
    with edgeserve.load(pkg.path) as model, torch.no_grad():
        got = model.predict(short)
        want = module(**{k: torch.from_numpy(v) for k, v in short.items()})
    np.testing.assert_allclose(got["logits"], want["logits"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["pooled"], want["pooled"].numpy(), rtol=1e-5, atol=1e-6)


def _mixed_columns(n: int = 300, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    columns = {"city": rng.choice(["oslo", "lima", "pune"], n), "age": rng.integers(18, 80, n),
               "income": rng.normal(50, 10, n)}
    labels = ((columns["age"] > 40) ^ (columns["city"] == "lima")).astype(int)
    return columns, labels


def _column_pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prep = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                              ("num", StandardScaler(), ["age", "income"])])
    return Pipeline([("prep", prep), ("rf", RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0))])


def test_a_pipeline_over_a_dataframe_of_text_and_numbers_takes_one_input_per_column(tmp_path: Path) -> None:
    """The common tabular case: a ColumnTransformer fit on a DataFrame with a text category. Each column becomes
    an input of its own type; calibration data and requests can be DataFrames; answers equal scikit-learn's."""
    pd = pytest.importorskip("pandas")
    columns, labels = _mixed_columns()
    frame = pd.DataFrame(columns)
    pipe = _column_pipeline().fit(frame, labels)
    pkg = edgeserve.convert(pipe, tmp_path / "pkg", example_inputs=frame[:4], calibration=frame)
    assert [(s.name, s.dtype) for s in pkg.manifest.inputs] == [("city", "str"), ("age", "int64"),
                                                                 ("income", "float32")]
    with edgeserve.load(pkg.path) as model:
        out = model.predict(frame[:50])
        floats = frame[:5].astype({"age": "float64"})  # what pandas makes of integers once a value is missing
        with pytest.raises(edgeserve.InputError, match=r"input 'age': the DataFrame's column is float64, the model "
                                                         r"takes int64; convert it with df\['age'\]\.astype\('int64'\)"):
            model.predict(floats)
    np.testing.assert_allclose(out["probabilities"], pipe.predict_proba(frame[:50]), atol=1e-5)


def test_an_estimator_fit_on_a_dataframe_converts_with_one_input_per_column(tmp_path: Path) -> None:
    """scikit-learn users fit plain estimators on DataFrames all the time: the columns are joined into one matrix,
    in the order the estimator was fit on (whatever the example's order), and a DataFrame answers by name.
    skl2onnx refused such an estimator ("at most 1 input(s) is(are) supported but we got 3")."""
    pd = pytest.importorskip("pandas")
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.integers(18, 80, 200), "income": rng.normal(50, 10, 200),
                          "score": rng.normal(0, 1, 200)})
    model = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(frame, frame.income * 2 + frame.age)
    pkg = edgeserve.convert(model, tmp_path / "pkg", example_inputs=frame[["score", "age", "income"]][:8],
                            calibration=frame)
    assert [(s.name, s.dtype) for s in pkg.manifest.inputs] == [("score", "float32"), ("age", "int64"),
                                                                 ("income", "float32")]
    with edgeserve.load(pkg.path) as served:
        got = next(iter(served.predict(frame[:50]).values()))
    np.testing.assert_allclose(got.ravel(), model.predict(frame[:50]), rtol=1e-5, atol=1e-3)
    with pytest.raises(edgeserve.DataError, match="are not the ones GradientBoostingRegressor was fit on"):
        edgeserve.convert(model, tmp_path / "other", example_inputs=frame.rename(columns={"age": "years"})[:8])


def test_a_dict_of_columns_converts_like_a_dataframe_and_mixed_arrays_are_refused_with_the_fix(tmp_path: Path) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from edgeserve.arrays import column

    columns, labels = _mixed_columns(seed=1)
    x = np.stack([columns["city"], columns["age"].astype(str)], axis=1).astype(object)
    pipe = Pipeline([("prep", ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), [0])],
                                                remainder="passthrough")), ("lr", LogisticRegression())])
    with pytest.raises(edgeserve.DataError, match="mix text and numbers.*DataFrame"):
        edgeserve.convert(pipe.fit(np.stack([columns["city"], columns["age"]], 1).astype(object), labels),
                          tmp_path / "mixed", example_inputs=x[:4].astype(object))
    pd = pytest.importorskip("pandas")  # fitting on named columns needs a DataFrame; converting does not
    pipe = _column_pipeline().fit(pd.DataFrame(columns), labels)
    pkg = edgeserve.convert(pipe, tmp_path / "pkg", example_inputs={k: v[:4] for k, v in columns.items()},
                            calibration={k: column(k, v) for k, v in columns.items()}, quantize="none")
    feed = {k: column(k, v[:20]) for k, v in columns.items()}  # [rows, 1] each, typed as the inputs
    with edgeserve.load(pkg.path) as model:
        np.testing.assert_allclose(model.predict(feed)["probabilities"],
                                   pipe.predict_proba(pd.DataFrame(columns)[:20]), atol=1e-5)


def test_a_text_normaliser_whose_locale_is_missing_here_still_loads(tmp_path: Path) -> None:
    """skl2onnx's TfidfVectorizer lowercases with a StringNormalizer in en_US.UTF-8, which slim containers lack:
    onnxruntime then refuses the model ("Failed to construct locale"). It is pointed at C.UTF-8, and says so."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("StringNormalizer", ["text"], ["lowered"], name="norm", case_change_action="LOWER",
                            locale="xx_NOWHERE.UTF-8")
    graph = helper.make_graph([node], "norm", [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
                              [helper.make_tensor_value_info("lowered", TensorProto.STRING, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "norm.onnx"))
    words = np.array(["Oslo", "LIMA", "pune"])
    pkg = edgeserve.convert(tmp_path / "norm.onnx", tmp_path / "pkg", calibration={"text": words})
    assert pkg.manifest.source["locales_replaced"] == {"norm": "xx_NOWHERE.UTF-8"}
    with edgeserve.load(pkg.path) as loaded:
        assert loaded.predict(words)["lowered"].tolist() == ["oslo", "lima", "pune"]


def test_a_conversion_that_answers_unlike_the_estimator_is_flagged(tmp_path: Path) -> None:
    """skl2onnx's tokenizer knows ASCII words only: a TF-IDF model of accented words converts into a graph that
    answers otherwise than the estimator. The converter's checks compare against that graph, so the estimator
    itself is asked too, on the example rows, and a difference is recorded (and warned about)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    checks = {}
    for label, words in (("ascii", ["good", "bad", "nice", "meh"]), ("accented", ["été", "éclair", "naïve", "bon"])):
        rng = np.random.default_rng(0)
        texts = [" ".join(rng.choice(words, 5)) for _ in range(200)]
        labels = np.array([t.split().count(words[0]) > 1 for t in texts]).astype(int)
        pipe = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, labels)
        column = np.array(texts).reshape(-1, 1)
        pkg = edgeserve.convert(pipe, tmp_path / label, example_inputs=column[:8], calibration=column)
        checks[label] = pkg.manifest.source["estimator_check"]
    assert checks["ascii"]["ok"] and checks["ascii"]["max_abs_diff"] < 1e-5
    assert not checks["accented"]["ok"] and checks["accented"]["max_abs_diff"] > 0.05


def test_a_library_error_is_quoted_with_the_reason_under_it() -> None:
    """skl2onnx's 'Unable to create node …' goes on with every attribute of the node; the reason is its cause."""
    from edgeserve.converter.frontends import _why

    try:
        try:
            raise TypeError("Field onnx.AttributeProto.ints: Expected an int, got a boolean.")
        except TypeError as cause:
            raise ValueError("Unable to create node 'TreeEnsembleClassifier' with attributes={" + "0.0, " * 500) from cause
    except ValueError as exc:
        text = _why(exc)
    assert len(text) < 400 and text.endswith("(Field onnx.AttributeProto.ints: Expected an int, got a boolean.)")


def test_estimators_skl2onnx_needs_help_with_convert_from_numpys_float64_data(tmp_path: Path) -> None:
    """Three things a scikit-learn user meets at once: data in float64 (the front end makes the graph float32, so
    calibration data is narrowed to it, not refused); an IsolationForest, which skl2onnx converts only at
    ``ai.onnx.ml`` opset 3 (it asked for ``target_opset={'ai.onnx.ml': 3}``); and a multi-output MLPRegressor,
    whose graph skl2onnx makes answer ``[rows x 2, 1]`` (reshaped to the estimator's ``[rows, 2]``)."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import IsolationForest
    from sklearn.neural_network import MLPRegressor

    x, y = load_diabetes(return_X_y=True)
    forest = IsolationForest(n_estimators=20, random_state=0).fit(x)
    pkg = edgeserve.convert(forest, tmp_path / "forest", example_inputs=x[:4], calibration=x[:150], quantize="none")
    with edgeserve.load(pkg.path) as model:
        out = model.predict(x[150:160].astype(np.float32))
    np.testing.assert_array_equal(out["label"].reshape(-1), forest.predict(x[150:160]))

    regressor = MLPRegressor(hidden_layer_sizes=(8,), max_iter=50, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged: what it answers is all that matters here
        regressor.fit(x, np.stack([y, -y], 1))
    pkg = edgeserve.convert(regressor, tmp_path / "mlp", example_inputs=x[:4], calibration=x[:150], quantize="none")
    assert pkg.manifest.source["estimator_check"]["reshaped"] == "variable"
    with edgeserve.load(pkg.path, batching=edgeserve.BatchConfig()) as model:
        out = model.predict(x[150:160].astype(np.float32))["variable"]
    assert out.shape == (10, 2)
    np.testing.assert_allclose(out, regressor.predict(x[150:160]), rtol=1e-4, atol=1e-3)


class _Tokens(torch.nn.Module):
    """Token ids and a mask, the way a text classifier takes them, and a float per row."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask, temperature):
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)) / temperature


@pytest.mark.parametrize("saved", ["torch.export.save", "torch.jit.save"])
def test_a_file_torch_saved_converts_from_the_command_line(tmp_path: Path, saved: str) -> None:
    """``edgeserve convert model.pt2`` (torch.export) and ``model.pt`` (TorchScript): the inputs keep forward's
    names, the batch and sequence axes stay dynamic, and the package answers as the module does."""
    from click.testing import CliRunner

    from edgeserve.cli import main

    torch.manual_seed(0)
    net = _Tokens().eval()
    rng = np.random.default_rng(0)
    ids, mask = rng.integers(0, 50, (64, 10)), (rng.random((64, 10)) < 0.8).astype(np.int64)
    mask[:, 0] = 1
    temperature = rng.uniform(0.5, 2, (64, 1)).astype(np.float32)
    path = tmp_path / ("model.pt2" if saved == "torch.export.save" else "model.pt")
    if saved == "torch.export.save":
        rows, seq = torch.export.Dim("rows"), torch.export.Dim("seq")
        program = torch.export.export(net, (torch.as_tensor(ids[:4]), torch.as_tensor(mask[:4]),
                                            torch.as_tensor(temperature[:4])),
                                      dynamic_shapes={"input_ids": {0: rows, 1: seq},
                                                      "attention_mask": {0: rows, 1: seq}, "temperature": {0: rows}})
        torch.export.save(program, str(path))
    else:
        torch.jit.save(torch.jit.script(net), str(path))
    cal = tmp_path / "cal.npz"
    np.savez(cal, temperature=temperature, attention_mask=mask, input_ids=ids)  # not forward's order: by name
    result = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "pkg"), "--calibration", str(cal)])
    assert result.exit_code == 0, result.output
    with edgeserve.load(tmp_path / "pkg") as model:
        assert [s.name for s in model.inputs] == ["input_ids", "attention_mask", "temperature"]
        other = rng.integers(0, 50, (5, 7))  # another batch size and sequence length than either example
        out = model.predict({"input_ids": other, "attention_mask": np.ones((5, 7), np.int64),
                             "temperature": temperature[:5]})
    with torch.no_grad():
        want = net(torch.as_tensor(other), torch.ones(5, 7, dtype=torch.long), torch.as_tensor(temperature[:5])).numpy()
    np.testing.assert_allclose(out["output"], want, rtol=1e-4, atol=1e-5)


class _DetectionHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scores, self.boxes = torch.nn.Linear(6, 3), torch.nn.Linear(6, 4)

    def forward(self, x):
        return {"scores": torch.softmax(self.scores(x), -1), "boxes": torch.sigmoid(self.boxes(x))}


class _DetectionPair(_DetectionHeads):
    def forward(self, x):
        return torch.softmax(self.scores(x), -1), torch.sigmoid(self.boxes(x))


@pytest.mark.parametrize(("net", "names"), [(_DetectionHeads, ["scores", "boxes"]), (_DetectionPair, ["output_0", "output_1"])],
                         ids=["dict", "tuple"])
def test_a_saved_programs_outputs_keep_the_names_its_forward_gives_them(tmp_path: Path, net: type, names: list[str]) -> None:
    """A torch.export program answering a dict keeps its keys as output names, a tuple is numbered as a module's
    is: left to the exporter they were named after their last operator ('softmax', 'sigmoid')."""
    torch.manual_seed(0)
    module = net().eval()
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(module, (torch.as_tensor(x[:2]),),
                                          dynamic_shapes=({0: torch.export.Dim("rows")},)), str(path))
    pkg = edgeserve.convert(path, tmp_path / "pkg", calibration={"x": x})
    with edgeserve.load(pkg.path) as model:
        assert [s.name for s in model.outputs] == names
        out = model.predict({"x": x})
    with torch.no_grad():
        want = module(torch.as_tensor(x))
    for name, value in zip(names, want.values() if isinstance(want, dict) else want):
        np.testing.assert_allclose(out[name], value.numpy(), rtol=1e-5, atol=1e-6)


def test_a_torchscript_file_without_rows_to_trace_it_asks_for_them(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_Tokens().eval()), str(path))
    with pytest.raises(ConversionError, match=r"model.pt is a TorchScript model: exporting it needs a few example "
                                              r"rows, an array per input \(input_ids, attention_mask, temperature\): "
                                              r"give --calibration"):
        edgeserve.convert(path, tmp_path / "pkg")


@pytest.mark.parametrize("kind", ["joblib", "pickle", "state_dict", "whole module"])
def test_a_pickle_is_never_loaded_and_the_message_says_what_to_do(tmp_path: Path, kind: str) -> None:
    """Unpickling runs whatever code the file holds: the converter refuses it, and nothing in it runs."""
    import pickle

    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (ran,))

    path = tmp_path / f"model.{kind.replace(' ', '_')}"
    if kind == "joblib":
        import joblib

        joblib.dump(Payload(), path)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(Payload()))
    elif kind == "state_dict":
        torch.save({**_Tokens().state_dict(), "payload": Payload()}, path)
    else:
        torch.save(_Tokens(), path)
    said = r"torch.save .*torch.export.save" if kind in ("state_dict", "whole module") else \
        r"a Python pickle .*runs any code it holds.*edgeserve.convert\(model"
    with pytest.raises(ConversionError, match=said):
        edgeserve.convert(path, tmp_path / "pkg")
    assert not ran.exists()
    assert not (tmp_path / "pkg").exists()


def test_run_and_inspect_on_a_file_torch_saved_say_to_convert_it_first(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgeserve.cli import main

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_Tokens().eval()), str(path))
    for args in (["inspect", str(path)], ["run", str(path), "--input", str(path)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0
        assert f"it is a torchscript file: convert it first (edgeserve convert {path} -o PACKAGE)" in result.output


def test_a_pickle_the_user_vouches_for_converts_from_the_command_line(tmp_path: Path) -> None:
    """``convert model.joblib --trust-pickle``: the estimator is loaded, its example rows come from the calibration
    data, and the package answers as the estimator does; a state_dict is refused even so."""
    import joblib
    from click.testing import CliRunner
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    from edgeserve.cli import main

    x, y = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=8, random_state=0).fit(x, y)
    joblib.dump(forest, tmp_path / "forest.joblib")
    np.savez(tmp_path / "x.npz", X=x.astype(np.float32))
    args = ["convert", str(tmp_path / "forest.joblib"), "-o", str(tmp_path / "pkg"), "--calibration",
            str(tmp_path / "x.npz")]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "--trust-pickle" in refused.output and not (tmp_path / "pkg").exists()
    result = CliRunner().invoke(main, [*args, "--trust-pickle"])
    assert result.exit_code == 0, result.output
    with edgeserve.load(tmp_path / "pkg") as model:
        assert model.name == "forest"
        out = model.predict(x[:20].astype(np.float32))
    np.testing.assert_array_equal(out["label"], forest.predict(x[:20]))
    torch.save(torch.nn.Linear(4, 3).state_dict(), tmp_path / "weights.pth")
    with pytest.raises(ConversionError, match="a state_dict's weights without the module"):
        from edgeserve.converter import saved

        saved.load_pickle(tmp_path / "weights.pth", saved.kind_of(tmp_path / "weights.pth"))


def test_a_traced_module_gets_the_variable_axes_it_is_told_of(tmp_path: Path) -> None:
    """``--dynamic-axis x:1 --dynamic-axis output:1``: a recurrent model traced on 20 steps answers 35 as torch does;
    a name the model does not have is refused, naming those it has."""
    from click.testing import CliRunner

    from edgeserve.cli import main

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.GRU(6, 8, batch_first=True)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    torch.manual_seed(0)
    net = Tagger().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's own notes on what it fixed
        torch.jit.save(torch.jit.trace(net, torch.randn(2, 20, 6)), str(tmp_path / "tagger.pt"))
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).standard_normal((40, 20, 6)).astype(np.float32))
    args = ["convert", str(tmp_path / "tagger.pt"), "-o", str(tmp_path / "pkg"), "--calibration", str(tmp_path / "cal.npz")]
    wrong = CliRunner().invoke(main, [*args, "--dynamic-axis", "y:1"])
    assert wrong.exit_code != 0 and "--dynamic-axis names y, which the model does not have; its inputs are x" in wrong.output
    result = CliRunner().invoke(main, [*args, "--dynamic-axis", "x:1", "--dynamic-axis", "output:1"])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(1).standard_normal((3, 35, 6)).astype(np.float32)
    with edgeserve.load(tmp_path / "pkg") as model:
        got = model.predict(x)["output"]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.as_tensor(x)).numpy(), rtol=1e-4, atol=1e-5)


def _count_and_fail(path: str) -> None:
    with open(path, "a") as f:
        f.write("ran\n")
    raise ModuleNotFoundError("No module named 'gone'")


def test_a_trusted_pickle_that_fails_to_load_runs_once_and_says_why(tmp_path: Path) -> None:
    """An import the file needs and this machine lacks fails the load once: it is not taken for joblib missing and
    the file's code run again through pickle."""
    import pickle

    from edgeserve.converter import saved

    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (_count_and_fail, (str(ran),))

    (tmp_path / "model.pkl").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ConversionError, match=r"cannot load the pickle .*ModuleNotFoundError: No module named 'gone'"):
        saved.load_pickle(tmp_path / "model.pkl", saved.PICKLE)
    assert ran.read_text() == "ran\n"


def test_bench_takes_a_trusted_pickle_and_a_traced_models_variable_axes(tmp_path: Path) -> None:
    """``bench`` converts what ``convert`` does: a pickle the user vouches for (with numpy's float64 rows, read as
    the converter reads them), and a TorchScript model with ``--dynamic-axis``; each flag applies to one SRC."""
    import joblib
    from click.testing import CliRunner
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from edgeserve.cli import main

    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), tmp_path / "iris.joblib")
    np.savez(tmp_path / "x.npz", X=x)  # float64, as scikit-learn users save it
    quick = ["--variants", "fp32", "--time-budget", "1", "--rounds", "1", "--cold-start-repeats", "0",
             "--batch-sizes", "1", "--concurrency", "1"]
    args = ["bench", str(tmp_path / "iris.joblib"), "--calibration", str(tmp_path / "x.npz"), *quick]
    refused = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "refused")])
    assert "--trust-pickle" in refused.output
    result = CliRunner().invoke(main, [*args, "--trust-pickle", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    variants = json.loads((tmp_path / "out" / "results.json").read_text())["models"][0]["variants"]
    assert [(v["name"], v["status"]) for v in variants] == [("fp32", "ok")], variants
    two = CliRunner().invoke(main, ["bench", str(tmp_path / "iris.joblib"), "digits-mlp", "--trust-pickle"])
    assert two.exit_code != 0 and "apply to one model file" in two.output

    class Steps(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.GRU(6, 8, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(Steps().eval(), torch.randn(2, 20, 6)), str(tmp_path / "gru.pt"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "steps.npz", x=rng.standard_normal((40, 20, 6)).astype(np.float32))
    np.savez(tmp_path / "long.npz", x=rng.standard_normal((16, 35, 6)).astype(np.float32))  # other lengths
    args = ["bench", str(tmp_path / "gru.pt"), "--calibration", str(tmp_path / "steps.npz"), "--data",
            str(tmp_path / "long.npz"), *quick, "--out", str(tmp_path / "gru-out")]
    without = CliRunner().invoke(main, args)
    assert "FAILED" in without.output  # traced at 20 steps: the 35-step data does not run
    result = CliRunner().invoke(main, [*args, "--dynamic-axis", "x:1", "--dynamic-axis", "output:1"])
    assert result.exit_code == 0 and "FAILED" not in result.output, result.output


@pytest.mark.parametrize("kind", ["classifier", "regressor", "classifier with missing values"])
def test_a_hist_gradient_boosting_model_converts_and_answers_as_the_estimator(tmp_path: Path, kind: str) -> None:
    """skl2onnx 1.20 wrote a leaf's missing-value flag as a bool (onnx refused it: every HistGradientBoosting model
    failed to convert) and its thresholds rounded to float32 (a value between the two took the other branch: 18 of
    442 diabetes rows off by up to 9.7 with 100 trees)."""
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    if kind == "regressor":
        x, y = load_diabetes(return_X_y=True)
        est = HistGradientBoostingRegressor(max_iter=100, random_state=0).fit(x, y)
    else:
        x, y = load_breast_cancer(return_X_y=True)
        if "missing" in kind:
            x = x.copy()
            x[np.random.default_rng(0).random(x.shape) < 0.1] = np.nan
        est = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, y)
    x = x.astype(np.float32)
    pkg = edgeserve.convert(est, tmp_path / "pkg", quantize="none", calibration=x[:200])
    assert pkg.manifest.source["estimator_check"]["ok"]
    with edgeserve.load(pkg.path) as model:
        out = model.predict(x)
    if kind == "regressor":
        np.testing.assert_allclose(out["variable"].reshape(-1), est.predict(x), atol=1e-3)
    else:
        np.testing.assert_allclose(out["probabilities"], est.predict_proba(x), atol=1e-5)


@pytest.mark.parametrize("kind", ["forest", "tree regressor"])
def test_a_tree_fit_on_missing_values_sends_them_where_the_estimator_does(tmp_path: Path, kind: str) -> None:
    """scikit-learn learns per split where a NaN goes; skl2onnx wrote every split as "NaN goes right", and a forest
    fit on rows with 15% of values missing answered 445 of 569 of them otherwise than the estimator."""
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeRegressor

    x, y = load_breast_cancer(return_X_y=True) if kind == "forest" else load_diabetes(return_X_y=True)
    x = x.copy()
    x[np.random.default_rng(0).random(x.shape) < 0.15] = np.nan
    x = x.astype(np.float32)
    est = (RandomForestClassifier(n_estimators=20, random_state=0) if kind == "forest"
           else DecisionTreeRegressor(random_state=0)).fit(x, y)
    pkg = edgeserve.convert(est, tmp_path / "pkg", quantize="none", calibration=x[:200])
    assert pkg.manifest.source["estimator_check"]["ok"]
    with edgeserve.load(pkg.path) as model:
        out = model.predict(x)
    if kind == "forest":
        np.testing.assert_allclose(out["probabilities"], est.predict_proba(x), atol=1e-5)
    else:
        np.testing.assert_allclose(out["variable"].reshape(-1), est.predict(x), rtol=1e-5)


def test_a_pipeline_ending_in_a_linear_svc_converts(tmp_path: Path) -> None:
    """skl2onnx's pipeline parser gave the LinearSVC a ``zipmap`` option its converter does not declare, and every
    such pipeline (TF-IDF + LinearSVC, the classic text classifier) failed to convert."""
    from sklearn.datasets import load_wine
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), LinearSVC()).fit(x, y)
    pkg = edgeserve.convert(pipe, tmp_path / "pkg", quantize="none", calibration=x)
    assert pkg.manifest.source["estimator_check"]["ok"]
    with edgeserve.load(pkg.path) as model:
        out = model.predict(x)
    np.testing.assert_array_equal(out["label"], pipe.predict(x))
    np.testing.assert_allclose(out["probabilities"], pipe.decision_function(x), atol=1e-4)


@pytest.mark.parametrize("voting", ["soft", "hard"])
def test_a_voting_classifier_converts_and_is_left_as_it_was(tmp_path: Path, voting: str) -> None:
    """skl2onnx converts a VotingClassifier only with ``flatten_transform=False`` (the default is True), a setting
    of ``transform()`` alone: a copy is converted, the caller's estimator keeps its setting. A hard vote has no
    ``predict_proba``, so skl2onnx gives it a ZipMap, unzipped as for an ONNX file (an ``SVC()`` likewise), its
    outputs named as a soft vote's: ``label`` and ``probabilities``."""
    from sklearn.datasets import load_wine
    from sklearn.ensemble import VotingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    vote = VotingClassifier([("lr", make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))),
                             ("nb", GaussianNB())], voting=voting).fit(x, y)
    pkg = edgeserve.convert(vote, tmp_path / "pkg", quantize="none", calibration=x)
    assert vote.flatten_transform is True
    assert pkg.manifest.source["estimator_check"]["ok"]
    with edgeserve.load(pkg.path) as model:
        out = model.predict(x)
    assert [o.name for o in pkg.manifest.outputs] == ["label", "probabilities"]
    labels, scores = out["label"], out["probabilities"]
    np.testing.assert_array_equal(labels, vote.predict(x))
    assert scores.shape == (len(x), 3)  # [rows, classes], not a ZipMap's list of maps
    if voting == "soft":
        np.testing.assert_allclose(scores, vote.predict_proba(x), atol=1e-5)


def test_a_classifier_without_predict_proba_answers_under_the_names_the_others_do(tmp_path: Path) -> None:
    """``SVC()`` has no ``predict_proba``: skl2onnx zips its scores into a ZipMap and names the outputs
    ``output_label`` and ``output_probability`` (and a value inside the graph ``label``), where every classifier with
    ``predict_proba`` answers ``label`` and ``probabilities``. Its package answers under those names too."""
    from sklearn.datasets import load_iris
    from sklearn.svm import SVC

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    svc = SVC().fit(x, y)
    pkg = edgeserve.convert(svc, tmp_path / "pkg", quantize="none", calibration=x)
    assert [o.name for o in pkg.manifest.outputs] == ["label", "probabilities"]
    with edgeserve.load(pkg.path) as model:
        out = model.predict(x)
    np.testing.assert_array_equal(out["label"], svc.predict(x))
    assert out["probabilities"].shape == (len(x), 3)


def _function_model() -> Any:
    """x → Block(w1) → Block(w2) → y, each Block a local function (MatMul, Relu), as onnxscript writes models."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    block = helper.make_function("local", "Block", ["a", "w"], ["b"],
                                 [helper.make_node("MatMul", ["a", "w"], ["m"]), helper.make_node("Relu", ["m"], ["b"])],
                                 [helper.make_opsetid("", 17)])
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)
               for name, shape in (("w1", (32, 32)), ("w2", (32, 8)))]
    graph = helper.make_graph([helper.make_node("Block", ["x", "w1"], ["h"], domain="local"),
                               helper.make_node("Block", ["h", "w2"], ["y"], domain="local")], "blocks",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                             functions=[block])


@pytest.mark.parametrize("given", ["file", "proto"])
def test_local_functions_are_written_out_so_every_quantiser_sees_their_operators(tmp_path: Path, given: str) -> None:
    """onnxruntime inlines a model's local functions when it loads one, but the source graph that OpenVINO's int8
    candidates of auto quantise kept the function calls: they found nothing to quantise ("its operators, Block,
    have no integer form there") and were skipped. The source is written out with the functions inlined, and
    answers as the model does."""
    import onnxruntime as ort

    from edgeserve.converter.frontends import load_source

    model = _function_model()
    source: Any = model
    if given == "file":
        source = tmp_path / "blocks.onnx"
        source.write_bytes(model.SerializeToString())
    (tmp_path / "work").mkdir()
    loaded = load_source(source, tmp_path / "work")
    written = onnx.load(str(loaded.path))
    assert loaded.info["functions_inlined"] == 1
    assert not written.functions and {n.op_type for n in written.graph.node} == {"MatMul", "Relu"}
    x = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    got = ort.InferenceSession(str(loaded.path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
