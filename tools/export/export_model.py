#!/usr/bin/env python3
"""Write edge-agent model files from scikit-learn and PyTorch-style weights.

A model file is a safetensors file whose metadata carries "edge.format": "1" and an
"edge.manifest" JSON document (see the README, "Model file"). This script writes one from:

  * a trained scikit-learn MLPClassifier (ReLU or identity hidden layers, multi-class), and
  * a PyTorch-style state_dict of NumPy arrays plus a list of layers (MLP or CNN).

Usage:
  export_model.py sklearn --data tools/data/digits.csv --hidden 64 --out mlp.safetensors
  export_model.py state-dict --npz weights.npz --manifest layers.json --out cnn.safetensors

As a library:
  from export_model import write_model, from_sklearn_mlp
"""
import argparse
import json
import sys

import numpy as np
from safetensors.numpy import save_file


def write_model(path, manifest, tensors):
    """Write `tensors` (name -> array) with `manifest` (a dict) as an edge-agent model file."""
    arrays = {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in tensors.items()}
    for layer in manifest["layers"]:
        for key in ("weight", "bias", "mean", "var"):
            if key in layer and layer[key] not in arrays:
                raise ValueError(f"layer {layer['op']}: tensor '{layer[key]}' is not in the state_dict")
    metadata = {"edge.format": "1", "edge.manifest": json.dumps(manifest, sort_keys=True)}
    save_file(arrays, path, metadata=metadata)


def from_sklearn_mlp(clf, name="sklearn-mlp", scale=1.0, offset=0.0):
    """Manifest and tensors for a fitted MLPClassifier; scores equal its predict_proba."""
    if clf.activation not in ("relu", "identity"):
        raise ValueError(f"activation '{clf.activation}' has no edge-agent op (use relu or identity)")
    if clf.out_activation_ != "softmax":
        raise ValueError("only multi-class classifiers (softmax output) can be exported")
    layers, tensors = [], {}
    count = len(clf.coefs_)
    for i, (coef, intercept) in enumerate(zip(clf.coefs_, clf.intercepts_), start=1):
        # scikit-learn stores [in, out]; the model file wants nn.Linear's [out, in].
        tensors[f"fc{i}.weight"] = coef.T
        tensors[f"fc{i}.bias"] = intercept
        layers.append({"op": "dense", "weight": f"fc{i}.weight", "bias": f"fc{i}.bias"})
        if i < count and clf.activation == "relu":
            layers.append({"op": "relu"})
    layers.append({"op": "softmax"})
    manifest = {
        "name": name,
        "version": 1,
        "input": {"shape": [int(clf.coefs_[0].shape[0])], "scale": float(scale), "offset": float(offset)},
        "labels": [str(c) for c in clf.classes_],
        "layers": layers,
    }
    return manifest, tensors


def from_state_dict(state_dict, layers, input_shape, labels, name="model", scale=1.0, offset=0.0):
    """Manifest and tensors for a state_dict (name -> array) and the layer list of the manifest."""
    manifest = {
        "name": name,
        "version": 1,
        "input": {"shape": list(input_shape), "scale": float(scale), "offset": float(offset)},
        "labels": list(labels),
        "layers": layers,
    }
    return manifest, dict(state_dict)


def read_csv(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=str)
    if header[-1] != "label":
        raise ValueError(f"{path}: the last column must be 'label'")
    return data[:, :-1].astype(np.float32), data[:, -1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sk = sub.add_parser("sklearn", help="train an MLPClassifier on a CSV file and export it")
    sk.add_argument("--data", required=True, help="CSV with a 'label' column")
    sk.add_argument("--hidden", default="64", help="hidden layer sizes, comma-separated (default 64)")
    sk.add_argument("--seed", type=int, default=0)
    sk.add_argument("--out", required=True)
    sd = sub.add_parser("state-dict", help="export a .npz state_dict with a layer list")
    sd.add_argument("--npz", required=True, help="arrays saved with numpy.savez, keyed by tensor name")
    sd.add_argument("--manifest", required=True, help="JSON file: {input, labels, layers[, name]} as in the manifest")
    sd.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.command == "sklearn":
        from sklearn.neural_network import MLPClassifier

        x, y = read_csv(args.data)
        scale = 1.0 / max(float(np.abs(x).max()), 1e-12)
        hidden = tuple(int(h) for h in args.hidden.split(","))
        clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=400, random_state=args.seed).fit(x * scale, y)
        manifest, tensors = from_sklearn_mlp(clf, scale=scale)
    else:
        with open(args.manifest) as f:
            spec = json.load(f)
        arrays = dict(np.load(args.npz))
        manifest = {"name": spec.get("name", "model"), "version": spec.get("version", 1), **spec}
        tensors = arrays
    write_model(args.out, manifest, tensors)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
