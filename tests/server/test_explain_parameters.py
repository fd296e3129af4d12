"""The server's explanation parameters: ``explain``, and ``explain_patch`` / ``explain_input``, which the
protocol has no field for (a segmentation network's explanation is refused at the default patch size and answers
at a larger one)."""

from __future__ import annotations

import numpy as np
import pytest

import edgeserve
from edgeserve.runtime.repository import Repository
from edgeserve.server.dataplane import DataPlane, InferRequest
from edgeserve.server.errors import BadRequest
from tests.factories import cnn_opset11, save


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("explain")
    images = np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)
    pkg = edgeserve.convert(save(cnn_opset11(size=16), tmp / "cnn.onnx"), tmp / "pkg", quantize="none",
                            calibration={"x": images})
    repo = Repository(tmp / "repo", create=True)
    repo.publish("cnn", pkg.path)
    runtime = edgeserve.Runtime(repo.root, guard=None)
    yield DataPlane(runtime), images
    runtime.close()


def _infer(plane: DataPlane, images: np.ndarray, **parameters):
    return plane.infer_sync(InferRequest(model="cnn", version=None, inputs={"x": ("FP32", images[:1])},
                                         parameters=parameters))


def _attributions(reply) -> np.ndarray:
    return reply.outputs["logits.attributions"]


def test_the_patch_size_and_the_input_come_from_the_request_parameters(plane) -> None:
    dataplane, images = plane
    default = _attributions(_infer(dataplane, images, explain=True))
    assert default.shape == (1, 64, 5)  # 16 px / 8 = 2 px patches: 8 x 8 of them
    coarse = _attributions(_infer(dataplane, images, explain=True, explain_patch=8, explain_input="x"))
    assert coarse.shape == (1, 4, 5)  # 2 x 2 patches of 8 px
    assert _attributions(_infer(dataplane, images, explain="true", explain_patch="4")).shape == (1, 16, 5)


@pytest.mark.parametrize("parameters, says", [
    ({"explain": True, "explain_patch": 0}, "'explain_patch' must be a positive whole number"),
    ({"explain": True, "explain_patch": -3}, "'explain_patch' must be a positive whole number"),
    ({"explain": True, "explain_patch": 2.5}, "'explain_patch' must be a positive whole number"),
    ({"explain": True, "explain_patch": True}, "'explain_patch' must be a positive whole number"),
    ({"explain_patch": 8}, "'explain_patch' only apply with 'explain': true"),
    ({"explain": False, "explain_input": "x"}, "'explain_input' only apply with 'explain': true"),
    ({"explain": True, "explain_input": 3}, "'explain_input' must name one of the model's inputs"),
    ({"explain": True, "explain_input": "nope"}, "nope"),
    ({"explain": "maybe"}, "parameter 'explain' must be true or false"),
])
def test_bad_explanation_parameters_are_refused_by_name(plane, parameters, says) -> None:
    dataplane, images = plane
    with pytest.raises(BadRequest, match=says.replace("(", r"\(")):
        _infer(dataplane, images, **parameters)
    assert _infer(dataplane, images, explain=False).outputs  # and the next request is answered
