#!/usr/bin/env python3
"""The compression pipeline on digits, measured stage by stage (README, "Compression").

FP32 baseline -> structured pruning (75% of the parameters removed, 5 rounds) -> distillation
from the baseline into the pruned model -> INT8 (post-training, KL) and INT4 (after QAT fine-tuning).
For each stage: parameters, file bytes, plan memory at batch 64, batch-1 and batch-64 latency
(`agentctl model bench`, one thread; the median of --runs rounds that time every stage once
each, so a drift in the machine's speed falls on all stages), held-out accuracy. Prints one
Markdown table per model.

    python3 tools/bench/compress_pipeline.py --agentctl .build-static/release/agentctl
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DIGITS = os.path.join(ROOT, "tools", "data", "digits.csv")

MODELS = {
    "MLP 64-256-256-10": ("mlp:64-256-256-10", 30, None),
    "CNN 1x8x8-c32-c64-m2-f128-10": ("cnn:1x8x8-c32-c64-m2-f128-10", 20, None),
    # With --digits28: digits upsampled to 28x28 (tools/bench/digits28.py), the large CNN of `make bench`.
    "CNN 1x28x28-c16k5-m2-c32k5-m2-f64-10": ("cnn:1x28x28-c16k5-m2-c32k5-m2-f64-10", 10, "digits28"),
}


def run(agentctl, *args):
    proc = subprocess.run([agentctl, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"agentctl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def describe(agentctl, path, data):
    """What does not change from run to run: sizes, plan memory, accuracy."""
    inspect = json.loads(run(agentctl, "model", "inspect", path, "--json"))
    accuracy = json.loads(run(agentctl, "model", "eval", path, "--data", data, "--test-split", "--json"))["accuracy"]
    memory = inspect["memoryBatch64"]
    return {
        "parameters": inspect["parameters"],
        "file_bytes": inspect["fileBytes"],
        "plan_bytes": memory["weights"] + memory["workspace"] + memory["activations"],
        "accuracy": accuracy,
        "b1_runs": [],
        "b64_runs": [],
    }


def bench(agentctl, path, seconds, m):
    lines = [json.loads(line) for line in run(agentctl, "model", "bench", path, "--batch", "1,64", "--seconds", str(seconds),
                                               "--json").splitlines()]
    m["precision"] = lines[0]["precision"]
    m["b1_runs"].append(lines[0]["latency_us"])
    m["b64_runs"].append(lines[1]["latency_us"])


def median(values):
    v = sorted(values)
    return v[len(v) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agentctl", default=os.path.join(ROOT, ".build-static", "release", "agentctl"))
    parser.add_argument("--seconds", type=float, default=1.0, help="bench time per batch size")
    parser.add_argument("--runs", type=int, default=5,
                        help="timing rounds, every stage once a round (a shared VM's speed drifts; the median is reported)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--digits28", help="digits at 28x28 (tools/bench/digits28.py OUT.csv): adds the 28x28 CNN")
    args = parser.parse_args()
    a = args.agentctl
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for title, (arch, epochs, source) in MODELS.items():
            if source == "digits28" and not args.digits28:
                continue
            DIGITS = args.digits28 if source == "digits28" else globals()["DIGITS"]  # noqa: N806
            p = lambda name: os.path.join(d, f"{arch.replace(':', '-')}-{name}.safetensors")  # noqa: E731
            print(f"{title}: training, pruning, distilling, quantizing ...", file=sys.stderr)
            run(a, "model", "train", "--data", DIGITS, "--arch", arch, "--epochs", str(epochs), "--seed", "1", "--out", p("fp32"))
            # Even widths: INT4 layers need an even input count (an odd one stays INT8).
            run(a, "model", "prune", p("fp32"), "--data", DIGITS, "--out", p("pruned"), "--sparsity", "0.75", "--structured",
                "--rounds", "5", "--multiple", "2")
            run(a, "model", "distill", "--teacher", p("fp32"), "--from", p("pruned"), "--data", DIGITS, "--out", p("distilled"),
                "--epochs", "30", "--lr", "0.0005")
            run(a, "model", "quantize", p("distilled"), p("int8"), "--calib", DIGITS, "--method", "kl", "--precision", "int8")
            run(a, "model", "train", "--data", DIGITS, "--from", p("distilled"), "--qat", "int4", "--group", "32", "--epochs", "10",
                "--lr", "0.0005", "--out", p("qat"))
            run(a, "model", "quantize", p("qat"), p("int4"), "--calib", DIGITS, "--precision", "int4", "--group", "32")
            # The control for QAT: the same distilled model quantized to INT4 without it.
            run(a, "model", "quantize", p("distilled"), p("ptq4"), "--calib", DIGITS, "--precision", "int4", "--group", "32")
            run(a, "model", "quantize", p("fp32"), p("fp32-int8"), "--calib", DIGITS, "--method", "kl", "--precision", "int8")
            # The same quantizations without the FP32 copies of the integer layers' weights.
            run(a, "model", "quantize", p("distilled"), p("int8-io"), "--calib", DIGITS, "--method", "kl", "--precision", "int8",
                "--integer-only")
            run(a, "model", "quantize", p("qat"), p("int4-io"), "--calib", DIGITS, "--precision", "int4", "--group", "32",
                "--integer-only")
            # 7-bit INT8 weights: the AVX2 vpmaddubsw kernel (what ORT's INT8 runs on such a CPU).
            run(a, "model", "quantize", p("distilled"), p("int8r-io"), "--calib", DIGITS, "--method", "kl", "--precision", "int8",
                "--integer-only", "--reduce-range")
            stages = [("FP32 baseline", "fp32"), ("baseline, INT8 (PTQ)", "fp32-int8"), ("pruned to 25%", "pruned"),
                      ("pruned + distilled", "distilled"), ("... + INT8 (PTQ, KL)", "int8"), ("... + INT4 (PTQ)", "ptq4"),
                      ("... + QAT INT4", "int4"), ("... + INT8, integer-only", "int8-io"), ("... + QAT INT4, integer-only", "int4-io"),
                      ("... + INT8 7-bit weights, integer-only", "int8r-io")]
            rows = [(label, p(name), describe(a, p(name), DIGITS)) for label, name in stages]
            print(f"{title}: timing {len(rows)} stages, {args.runs} rounds ...", file=sys.stderr)
            for _ in range(args.runs):
                for _, path, m in rows:
                    bench(a, path, args.seconds, m)
            for _, _, m in rows:
                m["b1_us"], m["b64_us"] = median(m["b1_runs"]), median(m["b64_runs"])
            results[title] = [(label, m) for label, _, m in rows]
    if args.json:
        print(json.dumps({t: [dict(stage=l, **m) for l, m in rows] for t, rows in results.items()}, indent=2))
        return
    for title, rows in results.items():
        base = rows[0][1]
        print(f"\n{title}\n")
        print("| stage | precision | parameters | file bytes | plan memory (b64) | batch 1 | batch 64 (range) | b64 vs FP32 | accuracy |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, m in rows:
            print(f"| {label} | {m['precision']} | {m['parameters']:,} | {m['file_bytes']:,} ({m['file_bytes'] / base['file_bytes']:.0%}) "
                  f"| {m['plan_bytes']:,} ({m['plan_bytes'] / base['plan_bytes']:.0%}) | {m['b1_us']:.1f} µs "
                  f"| {m['b64_us']:.1f} µs ({min(m['b64_runs']):.1f}–{max(m['b64_runs']):.1f}) "
                  f"| {base['b64_us'] / m['b64_us']:.2f}× | {m['accuracy'] * 100:.2f}% ({(m['accuracy'] - base['accuracy']) * 100:+.2f}) |")


if __name__ == "__main__":
    main()
