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


def read_manifest(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return json.loads(header["__metadata__"]["edge.manifest"])


def smooth_counts(c, eps=1e-4):
    """The reference smoothing (TensorRT's entropy calibrator as onnxruntime's calibrate.py has it):
    on counts, eps to every empty bin, taken evenly from the others."""
    zeros = c == 0
    nonzero = c.size - zeros.sum()
    if nonzero == 0:
        return None
    return c + np.where(zeros, eps, -eps * zeros.sum() / nonzero)


def reference_entropy_bin(hist, levels):
    """The KL threshold search, written from its description: P is the histogram cut at bin i with
    the clipped mass added to its last bin; Q merges the first i bins into `levels` levels (level j
    covers [j·i/levels, (j+1)·i/levels), fractional edges; a fractional level count gives a
    narrower last level) and spreads each level's mass evenly over the bins that are non-empty in P.
    Both smoothed on counts, then KL(P‖Q). Returns the best i (the first, on a tie). The first
    bin counts as the second (NVIDIA pytorch-quantization's `bins[0] = bins[1]`): a ReLU output's
    exact zeros would otherwise dominate the search."""
    from scipy.stats import entropy
    hist = hist.copy()
    hist[0] = hist[1]
    bins = hist.size
    slots = int(np.ceil(levels))
    best_kl, best_i = np.inf, bins
    for i in range(slots, bins + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        width = i / levels
        b = np.arange(i, dtype=np.float64)
        j0 = np.minimum(np.floor(b / width).astype(np.int64), slots - 1)
        first = np.clip((j0 + 1) * width - b, 0, 1)
        second_j = np.minimum(j0 + 1, slots - 1)
        second = np.where(j0 + 1 < slots, 1 - first, 0)
        nonempty = (p > 0).astype(np.float64)
        mass = np.bincount(j0, hist[:i] * first, slots) + np.bincount(second_j, hist[:i] * second, slots)
        cover = np.bincount(j0, nonempty * first, slots) + np.bincount(second_j, nonempty * second, slots)
        per = np.divide(mass, cover, out=np.zeros(slots), where=cover > 0)
        q = (first * per[j0] + second * per[second_j]) * nonempty
        ps, qs = smooth_counts(p), smooth_counts(q)
        kl = np.inf if ps is None or qs is None else entropy(ps, np.maximum(qs, 1e-12))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


@pytest.mark.parametrize("signed", [False, True])
def test_kl_threshold_equals_the_reference_search(tmp_path, signed):
    """The input tensor's KL range in a quantized file equals the reference search on the same
    2048-bin histogram (float32 arithmetic as the agent bins, the rows it calibrates on)."""
    rng = np.random.default_rng(11)
    n, f = 1500, 64
    x = rng.laplace(0, 1, (n, f)).astype(np.float32)
    x[rng.random((n, f)) < 0.002] *= 12  # a sparse tail
    if not signed:
        x = np.maximum(x, 0)  # a ReLU's exact zeros: half the rows in the first bin, which the search counts as the second
    y = rng.integers(0, 4, n)
    sd = {"fc.weight": rng.normal(0, 0.2, (4, f)), "fc.bias": np.zeros(4)}
    layers = [{"op": "dense", "weight": "fc.weight", "bias": "fc.bias"}, {"op": "softmax"}]
    manifest, tensors = from_state_dict(sd, layers, [f], list("abcd"), name="kl-ref")
    model, out, csv = (str(tmp_path / n) for n in ("m.safetensors", "q.safetensors", "x.csv"))
    write_model(model, manifest, tensors)
    with open(csv, "w") as fh:
        fh.write(",".join(f"f{i}" for i in range(f)) + ",label\n")
        for row, label in zip(x, y):
            fh.write(",".join(repr(float(v)) for v in row) + "," + "abcd"[label] + "\n")
    subprocess.run([AGENTCTL, "model", "quantize", model, out, "--calib", csv, "--method", "kl"],
                   capture_output=True, text=True, check=True)
    params = read_manifest(out)["quantization"]["activations"]["0"]

    calib = x[np.arange(n) % 5 != 4].ravel()
    lo, hi = calib.min(), calib.max()
    top = np.float32(max(abs(lo), abs(hi)))
    width = np.float32(top / np.float32(2048))
    v = np.abs(calib) * np.float32(np.float32(2048) / top)
    index = np.where(v < np.float32(2047), v, np.float32(2047)).astype(np.int64)
    hist = np.bincount(index, minlength=2048).astype(np.float64)
    i = reference_entropy_bin(hist, 256 if lo >= 0 else 127.5)
    t = np.float32(np.float32(i) * width)
    r_lo, r_hi = (np.float32(0), min(t, hi)) if lo >= 0 else (max(lo, -t), min(hi, t))
    r_lo, r_hi = min(r_lo, np.float32(0)), max(r_hi, np.float32(0))
    scale = np.float32(np.float32(r_hi - r_lo) / np.float32(255))
    assert params["scale"] == pytest.approx(float(scale), rel=1e-6), f"threshold bin {i} of 2048"
