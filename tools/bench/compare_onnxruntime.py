#!/usr/bin/env python3
"""Compare `agentctl model bench` with ONNX Runtime on the same weights, in one run.

For each model (by default the digits MLP 64-256-256-10, the 8x8 digits CNN, and a 28x28 CNN
with 5x5 kernels trained on digits upsampled to 28x28; all trained here with agentctl) the script
exports the model file to ONNX with the `onnx` package, checks that ONNX Runtime and the agent give
the same scores, then measures both single-threaded:

  * ONNX Runtime: CPU provider, intra_op_num_threads=1, all graph optimisations, denormals as
    zero (`session.set_denormal_as_zero`, as the agent flushes them), called through IO binding
    with preallocated inputs and outputs (the cheapest Python call path). Its per-call overhead
    is measured with a model of the same input and output shapes that computes nothing (Flatten
    and a Slice): it is printed beside each ratio, and the ratio with it taken off;
  * the agent: `agentctl model bench FILE --batch ... --threads 1 --json` (in-process plan calls).

Each figure is the median latency per call after warm-up, measured in 5 runs (engines alternating);
the tables give the median of the 5 and their range. The optimised ORT graphs are saved and their
node types counted, so a QDQ model that ORT did not fuse into integer ops shows. It also times one
training epoch of the MLP (batch 32) from `agentctl model train --json`.

Quantized: the same FP32 weights quantized by ONNX Runtime's `quantize_static` (QDQ, per-channel
INT8 weights, UINT8 activations, entropy calibration) and by `agentctl model quantize --method kl`
(and `--precision int4`, and `--reduce-range`: 7-bit weights, which run the AVX2 vpmaddubsw
kernel as ORT's own INT8 does on this CPU), both calibrated on the same rows (digits' training split), compared on
the held-out split for accuracy and agreement with FP32, and benchmarked as above.

Usage: compare_onnxruntime.py [--agentctl PATH] [--batch 1,8,64] [--seconds 1] [--json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(__file__))
import digits28  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DIGITS = os.path.join(ROOT, "tools", "data", "digits.csv")


def read_model(path):
    with safe_open(path, framework="numpy") as f:
        manifest = json.loads(f.metadata()["edge.manifest"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return manifest, tensors


def to_onnx(manifest, tensors):
    """An ONNX graph computing exactly what the model file means, preprocessing included."""
    shape = manifest["input"]["shape"]
    nodes, inits = [], []
    count = [0]

    def name(prefix):
        count[0] += 1
        return f"{prefix}{count[0]}"

    def const(value, prefix="c"):
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), n))
        return n

    cur = "x"
    inp = manifest["input"]
    if "mean" in inp:
        mean = tensors[inp["mean"]].reshape([1] + shape)
        std = tensors[inp["std"]].reshape([1] + shape)
        out = name("sub")
        nodes.append(helper.make_node("Sub", [cur, const(mean)], [out]))
        cur = out
        out = name("div")
        nodes.append(helper.make_node("Div", [cur, const(std)], [out]))
        cur = out
    else:
        scale, offset = inp.get("scale", 1.0), inp.get("offset", 0.0)
        if scale != 1.0:
            out = name("mul")
            nodes.append(helper.make_node("Mul", [cur, const(scale)], [out]))
            cur = out
        if offset != 0.0:
            out = name("add")
            nodes.append(helper.make_node("Add", [cur, const(offset)], [out]))
            cur = out
    for layer in manifest["layers"]:
        op = layer["op"]
        out = name(op)
        if op == "dense":
            ins = [cur, const(tensors[layer["weight"]])]
            if "bias" in layer:
                ins.append(const(tensors[layer["bias"]]))
            nodes.append(helper.make_node("Gemm", ins, [out], transB=1))
        elif op == "conv2d":
            ins = [cur, const(tensors[layer["weight"]])]
            if "bias" in layer:
                ins.append(const(tensors[layer["bias"]]))
            s = layer.get("stride", [1, 1])
            p = layer.get("padding", [0, 0])
            nodes.append(helper.make_node("Conv", ins, [out], strides=s, pads=[p[0], p[1], p[0], p[1]]))
        elif op in ("maxpool2d", "avgpool2d"):
            k = layer["kernel"]
            s = layer.get("stride", k)
            nodes.append(helper.make_node("MaxPool" if op == "maxpool2d" else "AveragePool", [cur], [out],
                                          kernel_shape=k, strides=s))
        elif op == "globalavgpool":
            mid = name("gap")
            nodes.append(helper.make_node("GlobalAveragePool", [cur], [mid]))
            nodes.append(helper.make_node("Flatten", [mid], [out], axis=1))
        elif op == "flatten":
            nodes.append(helper.make_node("Flatten", [cur], [out], axis=1))
        elif op == "relu":
            nodes.append(helper.make_node("Relu", [cur], [out]))
        elif op == "relu6":
            nodes.append(helper.make_node("Clip", [cur, const(0.0), const(6.0)], [out]))
        elif op == "leakyrelu":
            nodes.append(helper.make_node("LeakyRelu", [cur], [out], alpha=layer.get("alpha", 0.01)))
        elif op == "batchnorm":
            ins = [cur] + [const(tensors[layer[k]]) for k in ("weight", "bias", "mean", "var")]
            nodes.append(helper.make_node("BatchNormalization", ins, [out], epsilon=layer.get("eps", 1e-5)))
        elif op == "softmax":
            nodes.append(helper.make_node("Softmax", [cur], [out], axis=1))
        else:
            raise ValueError(f"op {op} has no ONNX mapping here")
        cur = out
    classes = len(manifest["labels"])
    graph = helper.make_graph(
        nodes, manifest["name"],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + shape)],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", classes])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


RUNS = 5


def ort_session(model, optimized_path=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def node_counts(path):
    """Node types of an optimised graph ORT saved: integer ops (QLinear*, *Integer) mean it fused QDQ."""
    counts = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def overhead_model(shape, classes):
    """Same input and output shapes as the model, no work: ORT's own cost of one call."""
    flat = int(np.prod(shape))
    inits = [numpy_helper.from_array(np.array(v, dtype=np.int64), n)
             for v, n in (([0], "starts"), ([classes], "ends"), ([1], "axes"))]
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Slice", ["f", "starts", "ends", "axes"], ["y"])]
    graph = helper.make_graph(nodes, "overhead", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert flat >= classes
    return model


def bench_ort(sess, shape, classes, batch, seconds):
    rng = np.random.default_rng(7)
    x = (rng.random([batch] + shape, dtype=np.float32) * 16).astype(np.float32)
    y = np.empty((batch, classes), dtype=np.float32)
    binding = sess.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output(sess.get_outputs()[0].name, "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
    for _ in range(20):
        sess.run_with_iobinding(binding)
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 20 or time.perf_counter() < deadline:
        t0 = time.perf_counter_ns()
        sess.run_with_iobinding(binding)
        times.append(time.perf_counter_ns() - t0)
    median_us = statistics.median(times) / 1000
    return {"batch": batch, "latency_us": median_us, "samples_per_s": batch / median_us * 1e6}


def spread(values):
    """Median of the runs and their range."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_agent(agentctl, model_path, batches, seconds):
    out = subprocess.run([agentctl, "model", "bench", model_path, "--batch", ",".join(map(str, batches)),
                          "--threads", "1", "--seconds", str(seconds), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def agent_scores(agentctl, model_path, data):
    out = subprocess.run([agentctl, "model", "predict", model_path, "--data", data, "--json"],
                         check=True, capture_output=True, text=True).stdout
    return np.array([json.loads(line)["scores"] for line in out.splitlines()], dtype=np.float32)


def train(agentctl, arch, epochs, out, data=DIGITS):
    res = subprocess.run([agentctl, "model", "train", "--data", data, "--arch", arch, "--epochs", str(epochs),
                          "--seed", "1", "--out", out, "--json"], check=True, capture_output=True, text=True).stdout
    lines = [json.loads(line) for line in res.splitlines()]
    return lines[:-1], lines[-1]


def load_digits(path=DIGITS):
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)
    return data[:, :-1], data[:, -1].astype(int)


def split(n):
    test = np.arange(n) % 5 == 4   # the split agentctl uses
    return ~test, test


def ort_quantize(model, shape, calib_rows, work, name):
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            # One batch: ORT's histogram collector needs equally shaped batches.
            self.batches = iter([{"x": calib_rows.reshape([-1] + shape)}])

        def get_next(self):
            return next(self.batches, None)

    src = os.path.join(work, f"{name}.onnx")
    dst = os.path.join(work, f"{name}.int8.onnx")
    onnx.save(model, src)
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Entropy)
    return onnx.load(dst)


def agent_quantize(agentctl, src, dst, precision, data, extra=()):
    out = subprocess.run([agentctl, "model", "quantize", src, dst, "--calib", data, "--method", "kl",
                          "--precision", precision, "--json", *extra], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def compare(agentctl, label, model_path, batches, seconds, work, data=DIGITS):
    manifest, tensors = read_model(model_path)
    model = to_onnx(manifest, tensors)
    stem = os.path.splitext(os.path.basename(model_path))[0]
    sess = ort_session(model, os.path.join(work, f"{stem}.optimized.onnx"))
    x, y = load_digits(data)
    train_rows, test_rows = split(len(x))
    shape = manifest["input"]["shape"]
    classes = len(manifest["labels"])
    ort_scores = sess.run(None, {"x": x.reshape([-1] + shape)})[0]
    max_diff = float(np.abs(ort_scores - agent_scores(agentctl, model_path, data)).max())

    # Quantized: ORT static QDQ vs agentctl quantize, same calibration rows (the training split).
    qpath = os.path.join(work, f"{stem}.int8.optimized.onnx")
    qsess = ort_session(ort_quantize(model, shape, x[train_rows], work, stem), qpath)
    fused = {"fp32": node_counts(os.path.join(work, f"{stem}.optimized.onnx")), "int8": node_counts(qpath)}
    q_scores = qsess.run(None, {"x": x[test_rows].reshape([-1] + shape)})[0]
    fp32_test = ort_scores[test_rows]
    int8_path = os.path.join(work, f"{stem}-int8.safetensors")
    int4_path = os.path.join(work, f"{stem}-int4.safetensors")
    int8_report = agent_quantize(agentctl, model_path, int8_path, "int8", data)
    int4_report = agent_quantize(agentctl, model_path, int4_path, "int4", data)
    # 7-bit weights (--reduce-range): the AVX2 vpmaddubsw kernel, as ORT's own on this CPU.
    int8r_path = os.path.join(work, f"{stem}-int8r.safetensors")
    int8r_report = agent_quantize(agentctl, model_path, int8r_path, "int8", data, ["--reduce-range"])
    accuracy = {
        "fp32": float((fp32_test.argmax(1) == y[test_rows]).mean()),
        "ort_int8": float((q_scores.argmax(1) == y[test_rows]).mean()),
        "ort_int8_agreement": float((q_scores.argmax(1) == fp32_test.argmax(1)).mean()),
        "agent_int8": int8_report["quantizedAccuracy"], "agent_int8_agreement": int8_report["agreement"],
        "agent_int4": int4_report["quantizedAccuracy"], "agent_int4_agreement": int4_report["agreement"],
        "agent_int8r": int8r_report["quantizedAccuracy"], "agent_int8r_agreement": int8r_report["agreement"],
    }

    overhead = ort_session(overhead_model(shape, classes))
    runs = {k: {b: [] for b in batches} for k in ("ort", "ort_int8", "ort_overhead", "agent", "agent_int8", "agent_int4",
                                                   "agent_int8r")}
    for _ in range(RUNS):
        for b in batches:
            runs["ort"][b].append(bench_ort(sess, shape, classes, b, seconds / RUNS)["latency_us"])
            runs["ort_int8"][b].append(bench_ort(qsess, shape, classes, b, seconds / RUNS)["latency_us"])
            runs["ort_overhead"][b].append(bench_ort(overhead, shape, classes, b, seconds / RUNS)["latency_us"])
        for key, path in (("agent", model_path), ("agent_int8", int8_path), ("agent_int4", int4_path), ("agent_int8r", int8r_path)):
            for r in bench_agent(agentctl, path, batches, seconds / RUNS):
                runs[key][r["batch"]].append(r["latency_us"])
    rows = []
    for b in batches:
        m = {k: spread(v[b]) for k, v in runs.items()}
        med = {k: v["median"] for k, v in m.items()}
        over = med["ort_overhead"]
        rows.append({
            "model": label, "batch": b, "runs": RUNS, "latency_us": m,
            "ort_overhead_us": over,
            "latency_ratio": med["agent"] / med["ort"],
            "latency_ratio_without_ort_overhead": med["agent"] / max(med["ort"] - over, 1e-9),
            "throughput_ratio": med["ort"] / med["agent"],
            "int8_latency_ratio": med["agent_int8"] / med["ort_int8"],
            "int8_latency_ratio_without_ort_overhead": med["agent_int8"] / max(med["ort_int8"] - over, 1e-9),
            "int8_throughput_ratio": med["ort_int8"] / med["agent_int8"],
            "int8r_latency_ratio": med["agent_int8r"] / med["ort_int8"],
            "int8r_latency_ratio_without_ort_overhead": med["agent_int8r"] / max(med["ort_int8"] - over, 1e-9),
            "int8r_throughput_ratio": med["ort_int8"] / med["agent_int8r"],
            "agent_int8_over_fp32": med["agent"] / med["agent_int8"],
            "agent_int8r_over_fp32": med["agent"] / med["agent_int8r"],
            "agent_int4_over_int8": med["agent_int8"] / med["agent_int4"],
            "agent_samples_per_s": b / med["agent"] * 1e6, "agent_int8_samples_per_s": b / med["agent_int8"] * 1e6,
            "ort_samples_per_s": b / med["ort"] * 1e6, "ort_int8_samples_per_s": b / med["ort_int8"] * 1e6,
        })
    return rows, max_diff, accuracy, fused


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agentctl", default=os.path.join(ROOT, ".build", "release", "agentctl"))
    ap.add_argument("--batch", default="1,8,64")
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per batch size and engine, over the 5 runs")
    ap.add_argument("--models", default="mlp,cnn8,cnn28", help="any of mlp, cnn8, cnn28")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    work = tempfile.mkdtemp(prefix="edge-bench-")
    wanted = args.models.split(",")

    mlp = os.path.join(work, "mlp.safetensors")
    epochs, summary = train(args.agentctl, "mlp:64-256-256-10", 30, mlp)
    models = []
    if "mlp" in wanted:
        models.append(("mlp 64-256-256-10", mlp, DIGITS))
    if "cnn8" in wanted:
        cnn = os.path.join(work, "cnn.safetensors")
        train(args.agentctl, "cnn:1x8x8-c32-c64-m2-f128-10", 20, cnn)
        models.append(("cnn 1x8x8-c32-c64-m2-f128-10", cnn, DIGITS))
    if "cnn28" in wanted:
        data28 = digits28.write(os.path.join(work, "digits28.csv"))
        cnn28 = os.path.join(work, "cnn28.safetensors")
        train(args.agentctl, "cnn:1x28x28-c16k5-m2-c32k5-m2-f64-10", 3, cnn28, data28)
        models.append(("cnn 1x28x28-c16k5-m2-c32k5-m2-f64-10", cnn28, data28))

    results, diffs, accuracy, fused = [], {}, {}, {}
    for label, path, data in models:
        rows, diffs[label], accuracy[label], fused[label] = compare(args.agentctl, label, path, batches, args.seconds, work, data)
        results += rows
    epoch_s = statistics.median(e["seconds"] for e in epochs)
    report = {
        "onnxruntime": ort.__version__, "threads": 1, "runs": RUNS, "results": results, "max_abs_score_diff": diffs,
        "held_out_accuracy": accuracy, "ort_optimized_nodes": fused,
        "mlp_train_epoch_s_median": epoch_s, "mlp_train_rows": summary["trainRows"], "mlp_train_batch": 32,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return

    def cell(r, key):
        m = r["latency_us"][key]
        return f"{m['median']:.1f} ({m['min']:.1f}-{m['max']:.1f})"

    print(f"ONNX Runtime {ort.__version__} vs agentctl, 1 thread; latency per call in us: median of {RUNS} runs (range)")
    print("ratios are agent / ORT for latency (< 1: the agent is faster) and ORT / agent for throughput (> 1: the agent is faster);")
    print("'-ovh': with ORT's per-call overhead (a model that computes nothing) taken off ORT's latency")
    for prec, a, o, key in (("FP32", "agent", "ort", ""), ("INT8", "agent_int8", "ort_int8", "int8_"),
                            ("INT8, the agent with 7-bit weights (--reduce-range)", "agent_int8r", "ort_int8", "int8r_")):
        print(f"\n{prec}")
        print(f"{'model':38} {'batch':>5} {'ORT us':>22} {'agent us':>22} {'ORT ovh':>8} {'lat ratio':>9} {'-ovh':>6} {'thr ratio':>9}")
        for r in results:
            print(f"{r['model']:38} {r['batch']:5d} {cell(r, o):>22} {cell(r, a):>22} {r['ort_overhead_us']:8.1f} "
                  f"{r[key + 'latency_ratio']:9.2f} {r[key + 'latency_ratio_without_ort_overhead']:6.2f} {r[key + 'throughput_ratio']:9.2f}")
    print("\nagent INT8 over its FP32 (throughput), 7-bit INT8 over FP32, INT4 over INT8:")
    for r in results:
        print(f"  {r['model']:38} batch {r['batch']:3d}: int8/fp32 {r['agent_int8_over_fp32']:.2f}, "
              f"int8-7bit/fp32 {r['agent_int8r_over_fp32']:.2f}, int4/int8 {r['agent_int4_over_int8']:.2f}")
    print()
    for label, a in accuracy.items():
        print(f"{label}: held-out accuracy fp32 {a['fp32']:.2%}; ORT int8 {a['ort_int8']:.2%} (agreement {a['ort_int8_agreement']:.2%}); "
              f"agent int8 {a['agent_int8']:.2%} (agreement {a['agent_int8_agreement']:.2%}); "
              f"agent int4 {a['agent_int4']:.2%} (agreement {a['agent_int4_agreement']:.2%}); "
              f"agent int8 7-bit {a['agent_int8r']:.2%} (agreement {a['agent_int8r_agreement']:.2%})")
    for label, f in fused.items():
        print(f"ORT optimised graph, {label}: fp32 {f['fp32']}; int8 {f['int8']}")
    for label, d in diffs.items():
        print(f"max |score difference|, {label}: {d:.2e}")
    print(f"MLP training: median epoch {epoch_s * 1000:.1f} ms over {summary['trainRows']} rows, batch 32 (target <= 100 ms)")


if __name__ == "__main__":
    sys.exit(main())
