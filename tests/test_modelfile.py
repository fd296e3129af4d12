"""Model files are untrusted: unsafe external data, custom ops, deep nesting and junk are refused early."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeserve
from edgeserve.errors import ModelFileError
from edgeserve.modelfile import load_model
from tests.factories import mlp_model, rows, save


def _external_model(folder: Path, location: str, *, offset: int | None = None, length: int | None = None,
                     write_data: bool = True) -> Path:
    """The MLP with w1 stored as external data at ``location`` (written relative to ``folder``)."""
    model = mlp_model()
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    raw = numpy_helper.to_array(w1).tobytes()
    if write_data:
        target = folder / location
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(raw)
    w1.ClearField("float_data")
    w1.ClearField("raw_data")
    w1.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset if offset is not None else 0),
               "length": str(length if length is not None else len(raw))}
    for k, v in entries.items():
        e = w1.external_data.add()
        e.key, e.value = k, v
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_plain_external_data_loads(tmp_path: Path) -> None:
    path = _external_model(tmp_path, "weights.bin")
    with edgeserve.load(path) as model:
        out = model.predict(rows(2))["logits"]
    assert out.shape == (2, 4)


@pytest.mark.parametrize("location, message", [
    ("../x.bin", "outside the model's folder"),
    ("a/../../x.bin", "outside the model's folder"),
    ("/etc/passwd", "outside the model's folder"),
    ("", "is empty"),
])
def test_external_data_escaping_the_folder_is_refused(tmp_path: Path, location: str, message: str) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    path = _external_model(folder, location, write_data=False)
    with pytest.raises(ModelFileError, match=message):
        edgeserve.load(path)
    with pytest.raises(ModelFileError, match=message):
        edgeserve.convert(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_external_file(tmp_path: Path) -> None:
    path = _external_model(tmp_path, "weights.bin", write_data=False)
    with pytest.raises(ModelFileError, match="file not found"):
        edgeserve.load(path)


def test_symlinked_external_file_and_folder(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 2048)
    folder = tmp_path / "m"
    folder.mkdir()
    path = _external_model(folder, "weights.bin", write_data=False)
    os.symlink(secret, folder / "weights.bin")
    with pytest.raises(ModelFileError, match="symbolic link"):
        edgeserve.load(path)
    folder2 = tmp_path / "m2"
    folder2.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "w.bin").write_bytes(b"\0" * 2048)
    os.symlink(tmp_path / "elsewhere", folder2 / "sub")
    path2 = _external_model(folder2, "sub/w.bin", write_data=False)
    with pytest.raises(ModelFileError, match="symbolic link"):
        edgeserve.load(path2)


def test_hard_linked_external_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 2048)
    folder = tmp_path / "m"
    folder.mkdir()
    path = _external_model(folder, "w.bin", write_data=False)
    os.link(secret, folder / "w.bin")
    with pytest.raises(ModelFileError, match="hard link"):
        edgeserve.load(path)


@pytest.mark.parametrize("offset, length, message", [
    (-1, None, "negative offset"),
    (0, -5, "negative"),
    (0, 10**15, "runs past the end"),
    (2000, None, "runs past the end"),
    (0, 100, "need 2048"),
])
def test_bad_offsets_and_lengths(tmp_path: Path, offset: int, length: int | None, message: str) -> None:
    path = _external_model(tmp_path, "w.bin", offset=offset, length=length)
    with pytest.raises(ModelFileError, match=message):
        edgeserve.load(path)


def test_custom_domain_refused_unless_allowed(tmp_path: Path) -> None:
    node = helper.make_node("MyOp", ["x"], ["y"], domain="evil.ops")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("evil.ops", 1)])
    path = save(model, tmp_path / "custom.onnx")
    with pytest.raises(ModelFileError, match="custom domain 'evil.ops'.*allowed_domains"):
        edgeserve.load(path)
    # allow-listed, the check passes and onnxruntime itself reports that it has no such kernel
    load_model(path, allowed_domains=["evil.ops"])
    with pytest.raises(ModelFileError, match="onnxruntime cannot load"):
        edgeserve.load(path, allowed_domains=["evil.ops"])


def test_deeply_nested_subgraphs(tmp_path: Path) -> None:
    leaf = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    inner = leaf
    for depth in range(20):  # nested on one branch only: the file stays small, the depth is 20
        node = helper.make_node("If", ["c"], [f"y{depth}"], then_branch=inner, else_branch=leaf)
        inner = helper.make_graph([node], f"g{depth}", [], [helper.make_tensor_value_info(f"y{depth}", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(list(inner.node), "top",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              list(inner.output))
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "deep.onnx")
    with pytest.raises(ModelFileError, match="nest deeper"):
        edgeserve.load(path)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"this is not a model at all \x00\xff" * 10, "not a readable ONNX model|holds no graph"),
])
def test_junk_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        edgeserve.load(path)


def test_truncated_file(tmp_path: Path) -> None:
    data = mlp_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        edgeserve.load(path)


def test_size_cap(tmp_path: Path, mlp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="over the 100-byte cap"):
        load_model(mlp_path, max_bytes=100)


def test_model_bytes_cannot_use_external_data(tmp_path: Path) -> None:
    path = _external_model(tmp_path, "w.bin")
    proto = onnx.load(str(path), load_external_data=False)
    with pytest.raises(ModelFileError, match="given as bytes"):
        edgeserve.convert(proto, tmp_path / "out")


def test_tensor_sizes_are_computed_without_allocating() -> None:
    from edgeserve.modelfile import tensor_nbytes

    t = onnx.TensorProto()
    t.data_type = TensorProto.FLOAT
    t.dims.extend([2**40, 2**20])
    assert tensor_nbytes(t) == 4 * 2**60  # a number, not an allocation
    np.testing.assert_equal(tensor_nbytes(t) > 0, True)


def test_the_wire_reader_sees_what_onnx_sees(tmp_path: Path) -> None:
    """The load-time check reads the protobuf wire format itself (no import onnx): on real graphs, with
    subgraphs and external data, it must see the same nodes, domains, opsets and external tensors as onnx."""
    import onnx

    from edgeserve.modelfile import _external_tensors, _walk_nodes
    from edgeserve.onnxwire import read_model
    from tests.factories import control_flow_model, encoder_model, example, save_with_external_data

    paths = [example(name)[0] for name in ("digits-mlp", "digits-cnn", "tiny-bert")]
    paths.append(save(control_flow_model(), tmp_path / "cf.onnx"))
    paths.append(save(encoder_model(), tmp_path / "enc.onnx"))
    (tmp_path / "ext").mkdir()
    paths.append(save_with_external_data(encoder_model(), tmp_path / "ext" / "enc.onnx"))
    for path in paths:
        real = onnx.load(str(path), load_external_data=False)
        wire = read_model(path.read_bytes())
        assert [(n.domain, n.op_type, n.name, d) for n, d in _walk_nodes(real.graph, 0)] == \
               [(n.domain, n.op_type, n.name, d) for n, d in _walk_nodes(wire.graph, 0)], path
        assert [(o.domain, o.version) for o in real.opset_import] == [(o.domain, o.version) for o in wire.opset_import]
        assert [(t.name, list(t.dims), t.data_type, [(e.key, e.value) for e in t.external_data])
                for t in _external_tensors(real)] == \
               [(t.name, list(t.dims), t.data_type, [(e.key, e.value) for e in t.external_data])
                for t in _external_tensors(wire)]


@pytest.mark.parametrize("seed", range(20))
def test_the_wire_reader_refuses_garbage_cleanly(tmp_path: Path, seed: int) -> None:
    """Random bytes and a real model with random bytes flipped: a ModelFileError or a clean load, never a
    traceback from the parser."""
    from tests.factories import example

    rng = np.random.default_rng(seed)
    good = example("digits-mlp")[0].read_bytes()
    for data in (rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
                 bytes(b ^ (int(rng.integers(1, 256)) if rng.random() < 0.01 else 0) for b in good)):
        path = tmp_path / f"m{seed}.onnx"
        path.write_bytes(data)
        try:
            from edgeserve.modelfile import check_model_file

            check_model_file(path)
        except edgeserve.ModelFileError:
            pass
