#!/usr/bin/env python3
"""Writes the model fuzzer's seed corpus (Tests/Fuzz/model): tiny edge-agent model files that
pass every rule, each exercising other ops, dtypes and the quantization section.
Run from the repository root: python3 tools/fuzz/make_model_seeds.py"""
import json
import os
import struct

OUT = "Tests/Fuzz/model"


def f16(x):
    return struct.pack("<e", x)


def bf16(x):
    return struct.pack("<f", x)[2:]


def tensor(dtype, shape, values):
    count = 1
    for d in shape:
        count *= d
    if dtype == "F32":
        data = b"".join(struct.pack("<f", values(i)) for i in range(count))
    elif dtype == "F16":
        data = b"".join(f16(values(i)) for i in range(count))
    elif dtype == "BF16":
        data = b"".join(bf16(values(i)) for i in range(count))
    elif dtype == "I8":
        data = bytes((values(i) & 0xFF) for i in range(count))
    elif dtype == "U8":
        data = bytes(values(i) & 0xFF for i in range(count))
    else:
        raise ValueError(dtype)
    return dtype, shape, data


def write(name, manifest, tensors):
    header = {"__metadata__": {"edge.format": "1", "edge.manifest": json.dumps(manifest, separators=(",", ":"))}}
    data = b""
    for key, (dtype, shape, raw) in tensors.items():
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # 8-byte aligned data, as safetensors writers do
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def wave(i):
    return ((i * 37) % 17 - 8) / 10.0


def positive(i):
    return 0.5 + (i % 5) / 10.0


os.makedirs(OUT, exist_ok=True)

write("mlp.safetensors",
      {"name": "mlp", "version": 1, "input": {"shape": [4], "scale": 0.5, "offset": -1.0}, "labels": ["a", "b"],
       "layers": [{"op": "dense", "weight": "fc1.weight", "bias": "fc1.bias"}, {"op": "relu"},
                  {"op": "dense", "weight": "fc2.weight", "bias": "fc2.bias"}, {"op": "softmax"}],
       "trainable": ["fc2.weight", "fc2.bias"]},
      {"fc1.weight": tensor("F32", [3, 4], wave), "fc1.bias": tensor("F32", [3], wave),
       "fc2.weight": tensor("F32", [2, 3], wave), "fc2.bias": tensor("F32", [2], wave)})

write("cnn-batchnorm.safetensors",
      {"name": "cnn", "version": 2, "input": {"shape": [1, 4, 4], "mean": "in.mean", "std": "in.std"},
       "layers": [{"op": "conv2d", "weight": "c1.weight", "stride": 1, "padding": [1, 1]},
                  {"op": "batchnorm", "weight": "bn.weight", "bias": "bn.bias", "mean": "bn.mean", "var": "bn.var", "eps": 0.001},
                  {"op": "relu6"}, {"op": "maxpool2d", "kernel": 2},
                  {"op": "flatten"}, {"op": "leakyrelu", "alpha": 0.1},
                  {"op": "dense", "weight": "fc.weight", "bias": "fc.bias"}],
       "lineage": {"parent": "x", "steps": [1, 2.5, True, None]}},
      {"in.mean": tensor("F32", [1, 4, 4], wave), "in.std": tensor("F32", [1, 4, 4], positive),
       "c1.weight": tensor("F16", [2, 1, 3, 3], wave),
       "bn.weight": tensor("F32", [2], positive), "bn.bias": tensor("F32", [2], wave),
       "bn.mean": tensor("F32", [2], wave), "bn.var": tensor("F32", [2], positive),
       "fc.weight": tensor("BF16", [3, 8], wave), "fc.bias": tensor("F32", [3], wave)})

write("cnn-pools.safetensors",
      {"name": "pools", "version": 1, "input": {"shape": [2, 5, 5]},
       "layers": [{"op": "conv2d", "weight": "c.weight", "bias": "c.bias", "stride": [2, 1]},
                  {"op": "avgpool2d", "kernel": [1, 2], "stride": 1}, {"op": "relu"},
                  {"op": "globalavgpool"}, {"op": "dense", "weight": "fc.weight"}]},
      {"c.weight": tensor("F32", [3, 2, 2, 2], wave), "c.bias": tensor("F32", [3], wave),
       "fc.weight": tensor("F32", [2, 3], wave)})

# INT8 and INT4 layers as the agent's quantizer writes them (per-channel scales, 32-wide INT4 groups).
write("mlp-quantized.safetensors",
      {"name": "mlpq", "version": 3, "input": {"shape": [4]},
       "layers": [{"op": "dense", "weight": "fc1.weight", "bias": "fc1.bias"}, {"op": "relu"},
                  {"op": "dense", "weight": "fc2.weight", "bias": "fc2.bias"}, {"op": "softmax"}],
       "quantization": {"method": "kl", "calibration_rows": 100,
                        "activations": {"0": {"scale": 0.02, "zero_point": 128}, "1": {"scale": 0.01, "zero_point": 0},
                                        "2": {"scale": 0.01, "zero_point": 0}},
                        "layers": [{"layer": 0, "precision": "int8", "weight": "fc1.q", "weight_scale": "fc1.s"},
                                   {"layer": 2, "precision": "int4", "weight": "fc2.q", "weight_scale": "fc2.s", "group": 32}],
                        "adaptive": {"mode": "fixed", "threshold": 0.2}}},
      {"fc1.weight": tensor("F32", [8, 4], wave), "fc1.bias": tensor("F32", [8], wave),
       "fc2.weight": tensor("F32", [4, 8], wave), "fc2.bias": tensor("F32", [4], wave),
       "fc1.q": tensor("I8", [8, 4], lambda i: (i * 13) % 200 - 100), "fc1.s": tensor("F32", [8], lambda i: 0.01),
       "fc2.q": tensor("U8", [4, 4], lambda i: i * 7), "fc2.s": tensor("F32", [4, 1], lambda i: 0.02)})
