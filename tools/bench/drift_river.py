#!/usr/bin/env python3
"""River's ADWIN and KSWIN on the confidence streams that `agentctl model drift-eval
--export-confidence FILE` wrote: the same streams the agent's monitor was measured on, one
detector per stream, River's default parameters. Prints the same columns as drift-eval
(median and p90 delay, misses within the drifted part, false alarms before the change) and the
run length between false alarms on the stationary streams.

    python3 tools/bench/drift_river.py confidence.csv [--json]
"""
import argparse
import csv
import json
import math
import sys

from river import drift


def detectors():
    return {"ADWIN": lambda: drift.ADWIN(), "KSWIN": lambda: drift.KSWIN(seed=1)}


def run(make, values):
    """Indices at which the detector reports a change."""
    d = make()
    hits = []
    for i, v in enumerate(values):
        d.update(v)
        if d.drift_detected:
            hits.append(i)
    return hits


def quantile(sorted_delays, total, q):
    """Misses count as later than any alarm."""
    i = math.ceil(total * q) - 1
    return sorted_delays[max(i, 0)] if i < len(sorted_delays) else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    csv.field_size_limit(sys.maxsize)
    streams = []
    with open(args.csv) as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            streams.append((row[0], int(row[1]), int(row[2]), [float(x) for x in row[3:]]))
    report = {}
    for name, make in detectors().items():
        rows, order = {}, []
        stationary_samples = stationary_alarms = 0
        for scenario, _seed, change, values in streams:
            hits = run(make, values)
            if change < 0:
                stationary_samples += len(values)
                stationary_alarms += len(hits)
                continue
            if scenario not in rows:
                rows[scenario] = {"delays": [], "streams": 0, "before": 0}
                order.append(scenario)
            r = rows[scenario]
            r["streams"] += 1
            r["before"] += sum(1 for h in hits if h < change)
            after = [h for h in hits if h >= change]
            if after and after[0] - change + 1 <= len(values) - change:
                r["delays"].append(after[0] - change + 1)
        table = []
        for scenario in order:
            r = rows[scenario]
            d = sorted(r["delays"])
            table.append({"scenario": scenario, "median_delay": quantile(d, r["streams"], 0.5), "p90_delay": quantile(d, r["streams"], 0.9),
                          "misses": r["streams"] - len(d), "streams": r["streams"], "false_alarms_before": r["before"]})
        run_length = stationary_samples / stationary_alarms if stationary_alarms else math.inf
        report[name] = {"scenarios": table, "stationary_samples": stationary_samples, "stationary_false_alarms": stationary_alarms,
                        "run_length": run_length}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    for name, r in report.items():
        print(f"{name} (River, defaults) on the confidence signal")
        print(f"  {'scenario':<18}{'median':>8}{'p90':>8}{'misses':>9}{'false alarms before':>22}")
        for s in r["scenarios"]:
            fmt = lambda x: ">after" if x is None else str(x)
            print(f"  {s['scenario']:<18}{fmt(s['median_delay']):>8}{fmt(s['p90_delay']):>8}{str(s['misses']) + '/' + str(s['streams']):>9}{s['false_alarms_before']:>22}")
        rl = "no alarm" if math.isinf(r["run_length"]) else f"{r['run_length']:.0f}"
        print(f"  stationary: {r['stationary_false_alarms']} false alarms in {r['stationary_samples']} samples, run length {rl}")


if __name__ == "__main__":
    main()
