"""Interop: ONNX models built with the onnx package (and exported by skl2onnx) import through
`agentctl model import` and give onnxruntime's scores to 1e-4; unsupported graphs are refused
with one line that names the node, and nothing is written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from export_model import read_csv  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
AGENTCTL = os.environ.get("AGENTCTL", os.path.join(ROOT, ".build", "release", "agentctl"))
DIGITS = os.path.join(ROOT, "tools", "data", "digits.csv")
RNG = np.random.default_rng(7)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def weights(*shape, scale=None):
    fan_in = int(np.prod(shape[1:]))
    return RNG.normal(0, scale or np.sqrt(2.0 / fan_in), shape).astype(np.float32)


def make_model(nodes, inits, input_shape, output="y", opset=17, output_shape=("N", "C")):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(input_shape))],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(output_shape))],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run_import(tmp_path, model, *extra, name="m"):
    src = tmp_path / f"{name}.onnx"
    out = tmp_path / f"{name}.safetensors"
    onnx.save_model(model, str(src))
    proc = subprocess.run([AGENTCTL, "model", "import", str(src), "--out", str(out), "--json", *extra],
                          capture_output=True, text=True)
    return proc, out


def agent_scores(model_path, csv_path):
    out = subprocess.run([AGENTCTL, "model", "predict", str(model_path), "--data", csv_path, "--json"],
                         capture_output=True, text=True, check=True)
    return np.array([json.loads(line)["scores"] for line in out.stdout.splitlines()], dtype=np.float64)


def ort_scores(model, x, output=None):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([output] if output else None, {session.get_inputs()[0].name: x})[0]


def digits(shape=None):
    x, _ = read_csv(DIGITS)
    x = x[:400]
    return x if shape is None else x.reshape((-1,) + shape)


def check_same_scores(tmp_path, model, x, *extra, output=None):
    proc, out = run_import(tmp_path, model, *extra)
    assert proc.returncode == 0, proc.stderr
    ours = agent_scores(out, DIGITS)[:len(x)]
    theirs = ort_scores(model, x, output).reshape(len(x), -1)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    return json.loads(proc.stdout)


def test_gemm_mlp_with_scalar_preprocessing(tmp_path):
    nodes = [
        helper.make_node("Sub", ["x", "c8"], ["a"]),
        helper.make_node("Div", ["a", "c8"], ["b"]),
        helper.make_node("Gemm", ["b", "w1", "b1"], ["h"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["z"]),  # transB=0: weight stored [in, out]
        helper.make_node("Softmax", ["z"], ["y"], axis=1),
    ]
    inits = [init("c8", 8.0), init("w1", weights(32, 64)), init("b1", weights(32, scale=0.1)),
             init("w2", weights(32, 10).T.copy().T), init("b2", weights(10, scale=0.1))]
    inits[3] = init("w2", RNG.normal(0, 0.25, (32, 10)))
    report = check_same_scores(tmp_path, make_model(nodes, inits, [64]), digits())
    assert report["layers"] == ["dense", "relu", "dense", "softmax"]
    assert report["steps"][0]["becomes"] == "preprocessing"


def test_matmul_add_mlp_with_per_feature_preprocessing_and_clip(tmp_path):
    mean = digits().mean(0)
    std = digits().std(0) + 1
    nodes = [
        helper.make_node("Add", ["neg_mean", "x"], ["a"]),   # constant first
        helper.make_node("Mul", ["a", "inv_std"], ["b"]),
        helper.make_node("MatMul", ["b", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("LeakyRelu", ["hb"], ["l"], alpha=0.2),
        helper.make_node("MatMul", ["l", "w2"], ["h2"]),
        helper.make_node("Add", ["b2", "h2"], ["h2b"]),
        helper.make_node("Clip", ["h2b", "zero", "six"], ["c"]),
        helper.make_node("Dropout", ["c"], ["d"]),
        helper.make_node("Gemm", ["d", "w3"], ["y"], transB=1),
    ]
    inits = [init("neg_mean", -mean), init("inv_std", 1 / std), init("w1", RNG.normal(0, 0.2, (64, 48))),
             init("b1", weights(48, scale=0.1)), init("w2", RNG.normal(0, 0.2, (48, 24))), init("b2", weights(1, 24, scale=0.5)),
             init("zero", 0.0), init("six", 6.0), init("w3", weights(10, 24))]
    report = check_same_scores(tmp_path, make_model(nodes, inits, [64]), digits())
    assert report["layers"] == ["dense", "leakyrelu", "dense", "relu6", "dense"]


def test_cnn_with_batchnorm_pools_and_same_padding(tmp_path):
    c1, c2 = 6, 8
    nodes = [
        helper.make_node("Mul", ["x", "scale"], ["xs"]),
        helper.make_node("Conv", ["xs", "k1", "kb1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mu", "var"], ["n1"], epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "k2"], ["c2"], auto_pad="SAME_UPPER", kernel_shape=[3, 3]),
        helper.make_node("Clip", ["c2", "zero", "six"], ["r2"]),
        helper.make_node("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w", "b"], ["z"], transB=1),
        helper.make_node("Softmax", ["z"], ["y"], axis=-1),
    ]
    inits = [init("scale", 1 / 16), init("k1", weights(c1, 1, 3, 3)), init("kb1", weights(c1, scale=0.1)),
             init("g", RNG.uniform(0.5, 1.5, c1)), init("beta", weights(c1, scale=0.1)),
             init("mu", weights(c1, scale=0.1)), init("var", RNG.uniform(0.5, 2, c1)),
             init("k2", weights(c2, c1, 3, 3)), init("zero", 0.0), init("six", 6.0),
             init("w", weights(10, c2 * 2 * 2)), init("b", weights(10, scale=0.1))]
    report = check_same_scores(tmp_path, make_model(nodes, inits, [1, 8, 8]), digits((1, 8, 8)))
    assert report["layers"] == ["conv2d", "batchnorm", "relu", "maxpool2d", "conv2d", "relu6", "avgpool2d",
                                "flatten", "dense", "softmax"]


def test_global_pool_reshape_and_old_opset_clip(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "k1", "kb1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1"], ["r1"], min=0.0, max=6.0),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"]),
        helper.make_node("Reshape", ["g", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1),
    ]
    inits = [init("k1", weights(12, 1, 3, 3)), init("kb1", weights(12, scale=0.1)),
             numpy_helper.from_array(np.array([-1, 12], dtype=np.int64), "shape"),
             init("w", weights(10, 12)), init("b", weights(10, scale=0.1))]
    report = check_same_scores(tmp_path, make_model(nodes, inits, [1, 8, 8], opset=9), digits((1, 8, 8)))
    # GlobalAveragePool already gives one value per channel: the Reshape that flattens becomes nothing.
    assert report["layers"] == ["conv2d", "relu6", "globalavgpool", "dense"]


def test_sklearn_mlp_through_skl2onnx(tmp_path):
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.neural_network import MLPClassifier

    x, y = read_csv(DIGITS)
    clf = MLPClassifier(hidden_layer_sizes=(48,), max_iter=200, random_state=0).fit(x, y)
    model = skl2onnx.to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}})
    proc, out = run_import(tmp_path, model, "--labels", ",".join(str(c) for c in clf.classes_))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["output"] == "probabilities" and report["unusedNodes"] > 0
    ours = agent_scores(out, DIGITS)
    np.testing.assert_allclose(ours, clf.predict_proba(x), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours, ort_scores(model, x, "probabilities"), atol=1e-4, rtol=0)


def refused(tmp_path, model, *extra):
    proc, out = run_import(tmp_path, model, *extra)
    assert proc.returncode != 0
    assert not out.exists(), "a refused import wrote its output"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_unsupported_graphs_are_refused_by_node(tmp_path):
    w = init("w", weights(10, 64))
    # An op the agent does not run.
    line = refused(tmp_path, make_model([helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
                                         helper.make_node("Tanh", ["h"], ["y"], name="act")], [w], [64]))
    assert "node 1 'act' (Tanh)" in line and "not an operator the agent runs" in line
    # A residual branch.
    line = refused(tmp_path, make_model([helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
                                         helper.make_node("Relu", ["h"], ["r"]),
                                         helper.make_node("Add", ["r", "h"], ["y"])],
                                        [w], [64]))
    assert "(Add)" in line
    # Grouped convolution.
    line = refused(tmp_path, make_model([helper.make_node("Conv", ["x", "k"], ["c"], group=2),
                                         helper.make_node("Flatten", ["c"], ["y"])],
                                        [init("k", weights(4, 1, 3, 3))], [2, 8, 8]))
    assert "(Conv)" in line and "group=2" in line
    # Asymmetric padding.
    line = refused(tmp_path, make_model([helper.make_node("Conv", ["x", "k"], ["c"], pads=[0, 0, 1, 1]),
                                         helper.make_node("Flatten", ["c"], ["y"])],
                                        [init("k", weights(4, 1, 3, 3))], [1, 8, 8]))
    assert "not symmetric" in line
    # A Clip that is neither relu nor relu6.
    line = refused(tmp_path, make_model([helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
                                         helper.make_node("Clip", ["h", "lo", "hi"], ["y"])],
                                        [w, init("lo", -1.0), init("hi", 1.0)], [64]))
    assert "Clip(-1.0, 1.0)" in line
    # Weights computed at run time.
    line = refused(tmp_path, make_model([helper.make_node("Relu", ["x"], ["wx"]),
                                         helper.make_node("MatMul", ["x", "wx"], ["y"])], [], [64]))
    assert "(MatMul)" in line


def test_hostile_files_are_refused_with_one_line(tmp_path):
    src = tmp_path / "bad.onnx"
    out = tmp_path / "bad.safetensors"
    for payload in [b"", b"\x00" * 10, b"\x0a\xff\xff\xff\xff\x0f", os.urandom(4096), b"not a model at all"]:
        src.write_bytes(payload)
        proc = subprocess.run([AGENTCTL, "model", "import", str(src), "--out", str(out)], capture_output=True, text=True)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not out.exists()
    # A weight whose data disagrees with its shape.
    model = make_model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [init("w", weights(10, 64))], [64])
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    line = refused(tmp_path, model)
    assert "initializer 'w'" in line and "holds" in line
    # A NaN weight.
    bad = weights(10, 64)
    bad[3, 5] = np.nan
    line = refused(tmp_path, make_model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [init("w", bad)], [64]))
    assert "not a finite number" in line
    # Weights kept outside the file.
    model = make_model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [init("w", weights(10, 64))], [64])
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.bin", size_threshold=0)
    proc = subprocess.run([AGENTCTL, "model", "import", str(tmp_path / "ext.onnx"), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 1 and "external file" in proc.stderr
    # Labels that do not fit.
    model = make_model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], [init("w", weights(10, 64))], [64])
    line = refused(tmp_path, model, "--labels", "a,b,c")
    assert "3 labels" in line
