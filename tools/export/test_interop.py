"""Interop: the agent's scores equal scikit-learn's and a NumPy reference's on the same weights."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from export_model import from_sklearn_mlp, from_state_dict, read_csv, write_model  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
AGENTCTL = os.environ.get("AGENTCTL", os.path.join(ROOT, ".build", "release", "agentctl"))
DIGITS = os.path.join(ROOT, "tools", "data", "digits.csv")


def predict(model_path, csv_path):
    out = subprocess.run([AGENTCTL, "model", "predict", model_path, "--data", csv_path, "--json"],
                         capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    return np.array([r["scores"] for r in rows], dtype=np.float64)


def write_csv(path, x):
    with open(path, "w") as f:
        f.write(",".join(f"f{i}" for i in range(x.shape[1])) + "\n")
        for row in x:
            f.write(",".join(repr(float(v)) for v in row) + "\n")


def test_sklearn_mlp_scores_equal_predict_proba(tmp_path):
    from sklearn.neural_network import MLPClassifier

    x, y = read_csv(DIGITS)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0).fit(x / 16.0, y)
    manifest, tensors = from_sklearn_mlp(clf, name="digits-sklearn", scale=1 / 16)
    model = str(tmp_path / "sk.safetensors")
    write_model(model, manifest, tensors)
    ours = predict(model, DIGITS)
    theirs = clf.predict_proba(x / 16.0)
    assert ours.shape == theirs.shape == (1797, 10)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert (ours.argmax(1) == theirs.argmax(1)).all()


# ---- NumPy reference for the CNN ops ------------------------------------------------------------

def conv2d(x, w, b, stride, padding):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    oh = (h + 2 * padding[0] - kh) // stride[0] + 1
    ow = (wd + 2 * padding[1] - kw) // stride[1] + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    return y + b[None, :, None, None]


def pool(x, k, s, reduce):
    n, c, h, w = x.shape
    oh, ow = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = reduce(x[:, :, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]], axis=(2, 3))
    return y


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_cnn_ops_equal_numpy_reference(tmp_path):
    rng = np.random.default_rng(7)
    sd = {
        "conv1.weight": rng.normal(0, 0.4, (6, 3, 3, 3)), "conv1.bias": rng.normal(0, 0.1, 6),
        "bn1.weight": rng.uniform(0.5, 1.5, 6), "bn1.bias": rng.normal(0, 0.1, 6),
        "bn1.running_mean": rng.normal(0, 0.1, 6), "bn1.running_var": rng.uniform(0.5, 2, 6),
        "conv2.weight": rng.normal(0, 0.3, (8, 6, 3, 3)), "conv2.bias": rng.normal(0, 0.1, 8),
        "fc.weight": rng.normal(0, 0.3, (5, 8 * 2 * 2)), "fc.bias": rng.normal(0, 0.1, 5),
    }
    layers = [
        {"op": "conv2d", "weight": "conv1.weight", "bias": "conv1.bias", "stride": [1, 1], "padding": [1, 1]},
        {"op": "batchnorm", "weight": "bn1.weight", "bias": "bn1.bias", "mean": "bn1.running_mean",
         "var": "bn1.running_var", "eps": 1e-5},
        {"op": "relu6"},
        {"op": "maxpool2d", "kernel": [2, 2], "stride": [2, 2]},
        {"op": "conv2d", "weight": "conv2.weight", "bias": "conv2.bias", "stride": [2, 1], "padding": [1, 0]},
        {"op": "leakyrelu", "alpha": 0.1},
        {"op": "avgpool2d", "kernel": [2, 2], "stride": [1, 1]},
        {"op": "flatten"},
        {"op": "dense", "weight": "fc.weight", "bias": "fc.bias"},
        {"op": "softmax"},
    ]
    manifest, tensors = from_state_dict(sd, layers, [3, 10, 10], list("abcde"), name="cnn-ref")
    model = str(tmp_path / "cnn.safetensors")
    write_model(model, manifest, tensors)

    x = rng.uniform(-1, 1, (40, 3, 10, 10))
    h = conv2d(x, sd["conv1.weight"], sd["conv1.bias"], (1, 1), (1, 1))
    inv = sd["bn1.weight"] / np.sqrt(sd["bn1.running_var"] + 1e-5)
    h = (h - sd["bn1.running_mean"][None, :, None, None]) * inv[None, :, None, None] + sd["bn1.bias"][None, :, None, None]
    h = np.clip(h, 0, 6)
    h = pool(h, (2, 2), (2, 2), np.max)
    h = conv2d(h, sd["conv2.weight"], sd["conv2.bias"], (2, 1), (1, 0))
    h = np.where(h > 0, h, 0.1 * h)
    h = pool(h, (2, 2), (1, 1), np.mean)
    reference = softmax(h.reshape(len(x), -1) @ sd["fc.weight"].T + sd["fc.bias"])

    csv = str(tmp_path / "x.csv")
    write_csv(csv, x.reshape(len(x), -1))
    ours = predict(model, csv)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=1e-4)


def test_exporter_refuses_unsupported_activation():
    from sklearn.neural_network import MLPClassifier

    x, y = read_csv(DIGITS)
    clf = MLPClassifier(hidden_layer_sizes=(8,), activation="tanh", max_iter=5, random_state=0).fit(x[:200], y[:200])
    with pytest.raises(ValueError, match="tanh"):
        from_sklearn_mlp(clf)
