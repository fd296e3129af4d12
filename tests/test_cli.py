"""The command line, through click's CliRunner and (for start-up imports) a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeserve.cli import main
from tests.factories import rows


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_convert_inspect_run(tmp_path: Path, mlp_path: Path, mlp_data) -> None:
    cal, ev = mlp_data
    out = tmp_path / "pkg"
    result = invoke("convert", mlp_path, "-o", out, "-q", "static", "--calibration", cal, "--data", ev)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout and "fidelity to fp32 on 32 rows of evaluation data" in result.stdout
    assert "calibrating" in result.stderr

    result = invoke("inspect", out)
    assert result.exit_code == 0
    for expected in ("mlp@1", "x: float32 [batch, 16]", "mode: static", "reference statistics (calibration", "digests: ok"):
        assert expected in result.stdout
    manifest = json.loads(invoke("inspect", out, "--json").stdout)
    assert manifest["recipe"]["mode"] == "static"

    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=rows(3))
    result = invoke("run", out, "-i", inputs, "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    assert "logits: float32 [3, 4]" in result.stdout
    with np.load(tmp_path / "out.npz") as saved:
        assert saved["logits"].shape == (3, 4)


def test_convert_takes_a_bundled_example_by_name_with_its_data(tmp_path: Path) -> None:
    """As bench does: ``edgeserve convert digits-mlp`` converts the bundled model, calibrated and judged on the
    example's own data and labels (it said 'model file not found: digits-mlp')."""
    result = invoke("convert", "digits-mlp", "-o", tmp_path / "pkg")
    assert result.exit_code == 0, result.output
    assert "the bundled example digits-mlp" in result.stderr
    assert "of evaluation data" in result.stdout and "accuracy: fp32" in result.stdout  # its labels were used
    assert "digits_mlp@1" in result.stdout


def test_run_takes_one_array_for_a_one_input_model_whatever_its_name(tmp_path: Path, mlp_package: Path) -> None:
    np.savez(tmp_path / "in.npz", features=rows(3))  # the model's input is 'x'
    result = invoke("run", mlp_package, "-i", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    np.savez(tmp_path / "two.npz", features=rows(3), other=rows(3))  # two arrays: which one is x is not guessed
    result = CliRunner().invoke(main, ["run", str(mlp_package), "-i", str(tmp_path / "two.npz")])
    assert result.exit_code != 0 and "missing 'x'; unknown 'features', 'other'" in result.output


def test_run_never_writes_its_answers_over_the_package_or_the_input(tmp_path: Path, mlp_package: Path) -> None:
    import shutil

    pkg = Path(shutil.copytree(mlp_package, tmp_path / "copy"))
    before = {p.name: p.read_bytes() for p in pkg.iterdir()}
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=rows(3))
    kept = inputs.read_bytes()
    for target, why in [(pkg / "model.onnx", "inside the package"), (pkg / "answers.npz", "inside the package"),
                        (inputs, "is the input file")]:
        result = invoke("run", pkg, "-i", inputs, "-o", target)
        assert result.exit_code == 2 and why in result.output, result.output
    assert {p.name: p.read_bytes() for p in pkg.iterdir()} == before and inputs.read_bytes() == kept
    model = pkg / "model.onnx"
    result = invoke("run", model, "-i", inputs, "-o", model)
    assert result.exit_code == 2 and model.read_bytes() == before["model.onnx"]


def test_runtime_errors_are_one_line_and_exit_1(tmp_path: Path, mlp_path: Path) -> None:
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=rows(3).astype(np.float64))
    result = invoke("run", mlp_path, "-i", inputs)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: input 'x': expected float32 [batch, 16], got float64 [3, 16]; convert it with .astype(np.float32)"
    )
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    result = invoke("convert", bad, "-o", tmp_path / "out")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.stderr
    assert "bad.onnx is not a readable ONNX model" in errors[0]
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path: Path, mlp_path: Path) -> None:
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=rows(1, n_in=8))  # 8 features where the model takes 16
    proc = subprocess.run([sys.executable, "-m", "edgeserve", "--debug", "run", str(mlp_path), "-i", str(inputs)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "InputError" in proc.stderr


def test_usage_errors_exit_2(tmp_path: Path, mlp_path: Path) -> None:
    assert invoke("convert", mlp_path).exit_code == 2  # missing -o
    assert invoke("convert", mlp_path, "-o", tmp_path / "x", "-q", "int3").exit_code == 2
    assert invoke("run", tmp_path / "missing", "-i", tmp_path / "x.npz").exit_code == 2
    assert invoke("frobnicate").exit_code == 2


def test_inspect_refuses_a_tampered_package(mlp_package: Path) -> None:
    (mlp_package / "golden.npz").write_bytes(b"changed")
    result = invoke("inspect", mlp_package)
    assert result.exit_code == 1 and "does not match its manifest digest" in result.stderr
    assert invoke("inspect", mlp_package, "--no-verify").exit_code == 0


def test_run_imports_no_converter_tools(mlp_package: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=rows(2))
    code = (
        "import sys\n"
        "from edgeserve.cli import main\n"
        f"try:\n    main(['run', {str(mlp_package)!r}, '-i', {str(inputs)!r}])\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('torch', 'skl2onnx', 'sklearn', 'onnxruntime.quantization', 'onnxruntime.transformers')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_converting_an_onnx_model_never_imports_torch(mlp_path: Path, tmp_path: Path) -> None:
    """onnxruntime's ``tools`` package imports torch whenever it is installed (3.4 s on this project's machine)
    for a helper the converter never uses; its shape inference is read without it, in the converter's process
    and in its quantising worker alike."""
    pytest.importorskip("torch")
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=rows(32))
    code = (
        "import os, sys\n"
        "from edgeserve.converter.memory import IN_PROCESS_ENV\n"
        "os.environ[IN_PROCESS_ENV] = '1'\n"
        "import edgeserve\n"
        f"edgeserve.convert({str(mlp_path)!r}, {str(tmp_path / 'pkg')!r}, quantize='static', "
        f"calibration={str(calibration)!r})\n"
        "print('TORCH', 'torch' in sys.modules, 'onnxruntime.tools' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TORCH False False" in proc.stdout, proc.stdout + proc.stderr


def test_import_prints_nothing_and_stays_light() -> None:
    code = "import sys, edgeserve; print(sorted(m for m in ('onnxruntime', 'onnx', 'torch') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]" and proc.stderr == ""


def test_module_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "edgeserve", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "edgeserve" in proc.stdout


def test_inspect_says_why_a_model_without_a_batch_axis_has_no_reference(tmp_path: Path) -> None:
    """A model whose input is one sample ([16], no batch axis) cannot be guarded, whatever data it was converted
    with: inspect says that, not "convert with calibration data", which it was."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "one.onnx"
    onnx.save(model, str(src))
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=rows(200))
    out = tmp_path / "pkg"
    assert invoke("convert", src, "-o", out, "--calibration", cal).exit_code == 0
    result = invoke("inspect", out)
    assert "reference statistics: none (the inputs have no batch axis" in result.stdout, result.stdout


def test_quantising_prints_no_engine_chatter(tmp_path: Path) -> None:
    """The quantisation tools open onnxruntime sessions with default options: a graph with an unused initializer
    (skl2onnx writes them) made each print a raw C++ warning line to the terminal. Errors still come through."""
    import onnx
    from onnx import numpy_helper

    from tests.factories import mlp_model

    model = mlp_model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "left_over"))
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=rows(40))
    proc = subprocess.run([sys.executable, "-m", "edgeserve", "convert", str(src), "-o", str(tmp_path / "pkg"), "-q",
                           "static", "--calibration", str(cal)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime" not in proc.stderr and "left_over" not in proc.stderr, proc.stderr


def test_the_converters_worker_process_keeps_engine_chatter_to_itself(tmp_path: Path) -> None:
    """A host that keeps its own onnxruntime logger quiet still got the quantisation worker's warnings (an
    skl2onnx graph's unused initializers) on its stderr: the worker is edgeserve's process, so it quiets itself."""
    code = (
        "import sys, numpy as np, onnxruntime, edgeserve\n"
        "onnxruntime.set_default_logger_severity(3)\n"
        "from sklearn.datasets import load_digits\n"
        "from sklearn.ensemble import GradientBoostingClassifier\n"
        "X, y = load_digits(return_X_y=True); X = X.astype(np.float32)\n"
        "est = GradientBoostingClassifier(n_estimators=5, random_state=0).fit(X[:500], y[:500])\n"
        "edgeserve.convert(est, sys.argv[1], example_inputs=X[:4], quantize='static', calibration=X[:100])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "pkg")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "W:onnxruntime" not in proc.stderr, proc.stderr


def test_inspect_of_a_bare_model_file_shows_its_signature_and_what_to_do_next(mlp_path: Path, tmp_path: Path) -> None:
    result = invoke("inspect", mlp_path)
    assert result.exit_code == 0, result.output
    assert "an ONNX model, not an edgeserve package" in result.output
    assert "x: float32 [batch, 16]  batch axis 0" in result.output and "logits: float32" in result.output
    assert "next: edgeserve convert" in result.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model at all")
    refused = invoke("inspect", junk)
    assert refused.exit_code == 1 and "not a readable ONNX model" in refused.stderr
    assert invoke("inspect", mlp_path, "--json").exit_code == 2


def test_text_answers_are_written_without_pickles_and_read_back(tmp_path: Path) -> None:
    """A classifier of named classes answers text (Python objects): `run -o` (and bench's cold-start probe, which
    reads its input file back) wrote it pickled, which edgeserve then refused to read."""
    from sklearn.linear_model import LogisticRegression

    import edgeserve
    from edgeserve.arrays import read_arrays, write_npz

    x = rows(60, seed=4)
    names = np.array(["cat", "dog", "émeu"])[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)]
    pkg = edgeserve.convert(LogisticRegression().fit(x, names), tmp_path / "pkg", example_inputs=x[:4],
                            calibration={"X": x})
    inputs = tmp_path / "in.npz"
    np.savez(inputs, X=x[:5])
    result = invoke("run", pkg.path, "-i", inputs, "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    back = read_arrays(tmp_path / "out.npz", what="answers")
    with edgeserve.load(pkg.path) as model:
        assert back["label"].tolist() == model.predict(x[:5])["label"].tolist()
    write_npz(tmp_path / "b.npz", {"t": np.array([b"caf\xc3\xa9", "x"], dtype=object)})
    assert read_arrays(tmp_path / "b.npz", what="t")["t"].tolist() == ["café", "x"]
    with pytest.raises(edgeserve.DataError, match="other than text"):
        write_npz(tmp_path / "c.npz", {"t": np.array([{"a": 1}], dtype=object)})


def test_run_answers_each_row_of_a_batch_one_detector_into_its_own_arrays(tmp_path: Path) -> None:
    """A detector exported at batch 1 keeps a different number of boxes per image, so several images' answers
    cannot be one array: ``run`` calls it once per row and writes ``boxes/0``, ``boxes/1``, … (one was refused)."""
    import numpy as np

    from edgeserve import load
    from tests.factories import kept_boxes_data, kept_boxes_model, save

    path = save(kept_boxes_model(), tmp_path / "det.onnx")
    data = kept_boxes_data(samples=3)
    np.savez(tmp_path / "in.npz", candidates=data)
    result = invoke("run", path, "--input", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    assert "one array per row of 3" in result.output and "boxes/0..2: float32, lengths" in result.output
    with np.load(tmp_path / "out.npz") as out:  # closed here: an open handle warned, and -W error failed the test
        written = {name: out[name] for name in out.files}
    assert sorted(written) == sorted(f"{n}/{i}" for n in ("boxes", "scores", "labels") for i in range(3))
    with load(path) as model:
        for i in range(3):
            alone = model.predict(data[i:i + 1])
            for name, value in alone.items():
                np.testing.assert_array_equal(written[f"{name}/{i}"], value)
    assert len({len(written[f"boxes/{i}"]) for i in range(3)}) > 1  # the rows really do keep different numbers


def test_serve_refuses_max_wait_without_batching(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:  # NOTE: were the flags let through, the port in use fails the start, never hangs
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = CliRunner().invoke(main, ["serve", str(tmp_path), "--no-batching", "--max-wait-ms", "30", "--port",
                                           str(taken.getsockname()[1]), "--no-grpc"])
    assert result.exit_code == 2 and "--max-wait-ms needs batching" in result.output


def test_convert_says_when_static_int8_quantised_nothing(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    onx = to_onnx(LogisticRegression(max_iter=500).fit(x, y), x[:1], options={"zipmap": False})
    (tmp_path / "lr.onnx").write_bytes(onx.SerializeToString())
    np.savez(tmp_path / "cal.npz", X=x)
    result = invoke("convert", tmp_path / "lr.onnx", "-o", tmp_path / "pkg", "-q", "static", "--calibration",
                    tmp_path / "cal.npz")
    assert result.exit_code == 0, result.output
    assert "WARNING: static quantisation found no operator to quantise" in result.stdout
    assert "LinearClassifier" in result.stdout
