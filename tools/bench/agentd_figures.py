#!/usr/bin/env python3
"""agentd's service figures, each from a fresh agentd with its own state directory.

  start      spawn to READY=1 (sd_notify, read from our own NOTIFY_SOCKET), registry already set up
  idle       resident memory (VmRSS) and CPU (utime+stime over --idle-seconds) with the model loaded
  load       `agentctl bench-load` at --clients concurrent clients, with dynamic batching
             (max_batch_size 64) and with max_batch_size 1, same concurrency
  reject     queue_capacity 1 under the same load: how fast queue-full (503) answers come back
             (closed loop: every answer, refusal or not, waits its turn on the shared cores)
  feedback   the load run again with --feedback-rate labelled samples/s (default 200) sent
             alongside, twice each way: the p99 ratio shows whether feedback writes reach the hot path
  drift      the load run with drift monitoring on (the model's reference) and off, alternated
             three times (one agentd each): the throughput cost of watching every row
  learning   p99 at 4 clients while update jobs run back to back (dry runs of `agentctl learn
             --wait` on 200 labelled, pixel-permuted digits rows) against the same load idle,
             alternated three times: what an update costs the serving path
  cnn        with --cnn-model (a compute-bound CNN, e.g. the 28x28 one of `make bench-agentd`) and
             --cnn-calibration: --clients clients sending one row each, with dynamic batching
             (max_batch_size 64) and with max_batch_size 1: throughput and p99 of both. Repeat
             --cnn-model (and --cnn-calibration, or give one for all) for several models.
  shed       with --compute-model (a model whose compute, not HTTP, is the bottleneck): one
             worker, queue_capacity 4, 8 clients sending 64-row F32 requests keep the queue full
             while one probe client measures how fast its requests are refused

usage: tools/bench/agentd_figures.py --bin .build/release --model M.safetensors --calibration C.csv
       (--batching-only: the load and cnn runs alone, for the batching figures)
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def write_config(d, args, model=None, drift=True, calibration=None, precision="int8", **serving):
    lines = ["[agent]", f'state_dir = "{d}/state"', f'socket = "{d}/agentd.sock"', 'socket_group = ""', 'log_level = "warning"',
             "", "[model]", f'initial = "{os.path.abspath(model or args.model)}"', f'precision = "{precision}"',
             f'calibration = "{os.path.abspath(calibration or args.calibration)}"',
             "", "[drift]", f"enabled = {'true' if drift else 'false'}", "", "[learn]", "auto = false",
             "", "[serving]"] + [f"{k} = {v}" for k, v in serving.items()]
    with open(f"{d}/agentd.toml", "w") as f:
        f.write("\n".join(lines) + "\n")


class Agentd:
    def __init__(self, args, d):
        self.notify_path = f"{d}/notify.sock"
        if os.path.exists(self.notify_path):
            os.unlink(self.notify_path)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([f"{args.bin}/agentd", "--config", f"{d}/agentd.toml"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(f"{d}/agentd.log", "ab"))
        self.notify.settimeout(60)
        while True:
            msg = self.notify.recv(4096).decode()
            if "READY=1" in msg:
                self.ready_ms = (time.monotonic() - self.t0) * 1000
                break

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.notify.close()

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

    def cpu_s(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_load(args, d, extra=(), clients=None):
    out = subprocess.run([f"{args.bin}/agentctl", "bench-load", "--socket", f"{d}/agentd.sock", "--clients", str(clients or args.clients),
                          "--seconds", str(args.seconds), "--json", *extra], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=".build/release")
    p.add_argument("--model", required=True)
    p.add_argument("--calibration", required=True)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--idle-seconds", type=float, default=10)
    p.add_argument("--binary", action="store_true", help="bench-load sends F32 rows instead of JSON")
    p.add_argument("--compute-model", help="a slower model for the load-shedding probe (e.g. the digits CNN)")
    p.add_argument("--cnn-model", action="append", default=[], help="a compute-bound CNN for the batching run (repeatable)")
    p.add_argument("--cnn-calibration", action="append", default=[], help="calibration rows of --cnn-model's input shape")
    p.add_argument("--cnn-precision", action="append", default=[], help="int8 (default) or fp32, per --cnn-model")
    p.add_argument("--batching-only", action="store_true", help="only the load runs (batching and max_batch_size 1) and the CNNs'")
    p.add_argument("--feedback-rate", type=float, default=200, help="feedback samples/s sent alongside the load in the feedback run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    extra = ["--binary"] if args.binary else []
    figures = {}
    with tempfile.TemporaryDirectory(prefix="agentd-figures-") as d:
        if args.batching_only:
            batching_runs(args, d, extra, figures)
            cnn_runs(args, d, figures)
            print_batching(args, figures)
            return
        write_config(d, args)
        first = Agentd(args, d)  # registers and quantizes the initial model
        figures["first_start_ms"] = first.ready_ms
        first.stop()
        starts = []
        for _ in range(3):
            a = Agentd(args, d)
            starts.append(a.ready_ms)
            if len(starts) < 3:
                a.stop()
        time.sleep(1)
        figures["start_ms"] = sorted(starts)
        figures["idle_rss_mb"] = a.rss_mb()
        c0, t0 = a.cpu_s(), time.monotonic()
        time.sleep(args.idle_seconds)
        figures["idle_cpu_percent"] = 100 * (a.cpu_s() - c0) / (time.monotonic() - t0)
        a.stop()

        batching_runs(args, d, extra, figures, queue_full=True)

        # Feedback writes alongside inference: the same load with and without 200 feedback/s,
        # alternated three times so drift in the machine's speed falls on both; medians compared.
        write_config(d, args, max_batch_size=64)
        a = Agentd(args, d)
        runs = {"without": [], "with": []}
        for _ in range(3):
            runs["without"].append(bench_load(args, d, extra))
            runs["with"].append(bench_load(args, d, extra + ["--feedback-rate", str(args.feedback_rate)]))
        figures["feedback_alongside"] = {k: {"p99Ms": sorted(r["p99Ms"] for r in v), "requestsPerS": sorted(r["requestsPerS"] for r in v),
                                             "feedbackPerS": [r.get("feedbackPerS") for r in v],
                                             "feedbackP99Ms": [r.get("feedbackP99Ms") for r in v]} for k, v in runs.items()}
        a.stop()

        # Drift monitoring's cost: on and off alternated, a fresh agentd each (not reloadable).
        drift = {"on": [], "off": []}
        for _ in range(3):
            for key, enabled in (("on", True), ("off", False)):
                write_config(d, args, drift=enabled, max_batch_size=64)
                a = Agentd(args, d)
                drift[key].append(bench_load(args, d, extra))
                a.stop()
        figures["drift"] = {k: {"requestsPerS": sorted(r["requestsPerS"] for r in v), "p99Ms": sorted(r["p99Ms"] for r in v)}
                            for k, v in drift.items()}

        # Serving while learning: 4 clients, idle against update jobs running back to back.
        write_config(d, args, max_batch_size=64)
        a = Agentd(args, d)
        with open(args.calibration) as f:
            rows = [line.rstrip("\n").split(",") for line in f]
        header, body = rows[0], rows[1:201]
        perm = list(range(len(header) - 1))
        perm = perm[7::8] + [i for i in perm if i % 8 != 7]  # a fixed permutation of the pixels
        with open(f"{d}/drifted.csv", "w") as f:
            f.write(",".join(header) + "\n")
            for r in body:
                f.write(",".join([r[i] for i in perm] + [r[-1]]) + "\n")
        subprocess.run([f"{args.bin}/agentctl", "feedback", "--socket", f"{d}/agentd.sock", "--data", f"{d}/drifted.csv"],
                       check=True, capture_output=True)
        learning = {"idle": [], "learning": [], "updates": [], "update_seconds": []}
        for _ in range(3):
            learning["idle"].append(bench_load(args, d, extra, clients=4))
            stop = time.monotonic() + args.seconds + 1
            learner = subprocess.Popen(["bash", "-c", f"while [ $(date +%s) -lt {int(time.time() + args.seconds + 1)} ]; do "
                                        f"{args.bin}/agentctl learn --socket {d}/agentd.sock --dry-run --wait --json; done"],
                                       stdout=subprocess.PIPE, text=True)
            time.sleep(0.3)
            learning["learning"].append(bench_load(args, d, extra, clients=4))
            out = learner.communicate()[0]
            jobs = [json.loads(chunk) for chunk in out.replace("}\n{", "}\x00{").split("\x00") if chunk.strip()]
            learning["updates"].append(len(jobs))
            learning["update_seconds"] += [j["seconds"] for j in jobs if j.get("seconds") is not None]
        figures["learning"] = {"idleP99Ms": sorted(r["p99Ms"] for r in learning["idle"]),
                               "learningP99Ms": sorted(r["p99Ms"] for r in learning["learning"]),
                               "idleRequestsPerS": sorted(r["requestsPerS"] for r in learning["idle"]),
                               "learningRequestsPerS": sorted(r["requestsPerS"] for r in learning["learning"]),
                               "updates": learning["updates"], "updateSeconds": sorted(learning["update_seconds"])}
        a.stop()

        cnn_runs(args, d, figures)

        if args.compute_model:
            write_config(d, args, model=args.compute_model, workers=1, queue_capacity=4)
            shutil.rmtree(f"{d}/state")
            a = Agentd(args, d)
            filler = subprocess.Popen([f"{args.bin}/agentctl", "bench-load", "--socket", f"{d}/agentd.sock", "--clients", "8",
                                       "--rows", "64", "--binary", "--seconds", str(args.seconds + 2), "--json"],
                                      stdout=subprocess.PIPE, text=True)
            time.sleep(1)
            figures["shed"] = bench_load(args, d, clients=1)
            figures["shed_filler"] = json.loads(filler.communicate()[0])
            figures["shed"]["rss_after_mb"] = a.rss_mb()
            a.stop()

    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"start to READY=1: {', '.join(f'{s:.0f}' for s in figures['start_ms'])} ms (first start with calibration {figures['first_start_ms']:.0f} ms)")
    print(f"idle: VmRSS {figures['idle_rss_mb']:.1f} MB, CPU {figures['idle_cpu_percent']:.2f}% over {args.idle_seconds:.0f} s")
    for name in ("queue_full", "shed"):
        if name in figures:
            print_load(name, figures[name])
    fa = figures["feedback_alongside"]
    median = lambda v: sorted(v)[len(v) // 2]
    print(f"p99 at {args.clients} clients without feedback {', '.join(f'{v:.2f}' for v in fa['without']['p99Ms'])} ms, "
          f"with {args.feedback_rate:.0f} feedback/s {', '.join(f'{v:.2f}' for v in fa['with']['p99Ms'])} ms "
          f"(feedback stored {', '.join(f'{v:.0f}' for v in fa['with']['feedbackPerS'])}/s, p99 {', '.join(f'{v:.2f}' for v in fa['with']['feedbackP99Ms'])} ms): "
          f"ratio of medians {median(fa['with']['p99Ms']) / median(fa['without']['p99Ms']):.2f}")
    dr = figures["drift"]
    print(f"drift monitoring at {args.clients} clients: on {', '.join(f'{v:.0f}' for v in dr['on']['requestsPerS'])} req/s, "
          f"off {', '.join(f'{v:.0f}' for v in dr['off']['requestsPerS'])} req/s: "
          f"ratio of medians {median(dr['on']['requestsPerS']) / median(dr['off']['requestsPerS']):.3f}")
    ln = figures["learning"]
    print(f"serving while learning at 4 clients: p99 idle {', '.join(f'{v:.2f}' for v in ln['idleP99Ms'])} ms, "
          f"during updates {', '.join(f'{v:.2f}' for v in ln['learningP99Ms'])} ms: ratio of medians "
          f"{median(ln['learningP99Ms']) / median(ln['idleP99Ms']):.2f}; req/s idle {median(ln['idleRequestsPerS']):.0f}, "
          f"learning {median(ln['learningRequestsPerS']):.0f}; {sum(ln['updates'])} updates ran, "
          f"{median(ln['updateSeconds']) if ln['updateSeconds'] else 0:.2f} s each (median)")
    print_batching(args, figures)


def batching_runs(args, d, extra, figures, queue_full=False):
    """The demo model at --clients clients with dynamic batching and with max_batch_size 1."""
    runs = [("batching", {"max_batch_size": 64}), ("batch_size_1", {"max_batch_size": 1})]
    if queue_full:
        runs.append(("queue_full", {"max_batch_size": 64, "queue_capacity": 1}))
    for name, serving in runs:
        write_config(d, args, **serving)
        a = Agentd(args, d)
        figures[name] = bench_load(args, d, extra)
        figures[name]["rss_after_mb"] = a.rss_mb()
        a.stop()


def cnn_runs(args, d, figures):
    """Dynamic batching on models whose compute is the bottleneck, one row a request (F32)."""
    figures["cnn"] = []
    for i, model in enumerate(args.cnn_model):
        calibration = args.cnn_calibration[min(i, len(args.cnn_calibration) - 1)] if args.cnn_calibration else None
        precision = args.cnn_precision[i] if i < len(args.cnn_precision) else "int8"
        entry = {"model": os.path.basename(model), "precision": precision}
        for name, serving in [("batching", {"max_batch_size": 64}), ("batch_size_1", {"max_batch_size": 1})]:
            write_config(d, args, model=model, calibration=calibration, precision=precision, **serving)
            shutil.rmtree(f"{d}/state", ignore_errors=True)
            a = Agentd(args, d)
            entry[name] = bench_load(args, d, ["--binary"])
            entry[name]["rss_after_mb"] = a.rss_mb()
            a.stop()
        figures["cnn"].append(entry)


def print_load(name, r):
    line = f"{name:13} {r['requestsPerS']:8.0f} req/s  p50 {r['p50Ms']:6.2f} ms  p99 {r['p99Ms']:6.2f} ms  ok {r['ok']}  503 {r['rejected']}"
    if r.get("rejectP99Ms") is not None:
        line += f" (answered in {r['rejectP50Ms']:.3f} ms at p50, {r['rejectP99Ms']:.3f} ms at p99)"
    print(line + f"  RSS after {r['rss_after_mb']:.0f} MB")


def print_batching(args, figures):
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for name in ("batching", "batch_size_1"):
        print_load(name, figures[name])
    print(f"batching gain at {args.clients} clients: {figures['batching']['requestsPerS'] / figures['batch_size_1']['requestsPerS']:.2f}x")
    for entry in figures.get("cnn", []):
        b, one = entry["batching"], entry["batch_size_1"]
        print(f"{entry['model']} ({entry['precision']}) at {args.clients} clients: batching {b['requestsPerS']:.0f} req/s p99 {b['p99Ms']:.2f} ms, "
              f"max_batch_size 1 {one['requestsPerS']:.0f} req/s p99 {one['p99Ms']:.2f} ms: "
              f"gain {b['requestsPerS'] / one['requestsPerS']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
