#!/usr/bin/env python3
"""Fleet simulation (README, "Fleet figures"): N agentd processes on one mosquitto, a signed
deployment to all of them through `agentctl fleet deploy`, and the figures: time until every
device reported its result, broker CPU, idle MQTT bytes per agent and day.

    python3 tools/fleet-sim/fleet_sim.py --bin .build-static/release --agents 50
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode not in (0, 1):
        sys.exit(f"fleet-sim: {' '.join(cmd[:3])}: {r.stderr.strip()}")
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=".build-static/release", help="directory with agentd and agentctl")
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--data", default="tools/data/digits.csv")
    ap.add_argument("--health-seconds", type=float, default=1.0, help="each device's deploy.health_seconds")
    ap.add_argument("--idle-seconds", type=float, default=20.0, help="idle time measured for the traffic figure")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    agentd, agentctl = os.path.join(a.bin, "agentd"), os.path.join(a.bin, "agentctl")
    work = tempfile.mkdtemp(prefix="fleet-sim-")
    procs, broker = [], None
    try:
        port = free_port()
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n")
            if os.getuid() == 0:
                f.write("user root\n")
        broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"mqtt://127.0.0.1:{port}"
        # Two FP32 models (no calibration at start): the one each agent starts with, the one deployed.
        for name, epochs in (("base", 3), ("next", 6)):
            run([agentctl, "model", "train", "--data", a.data, "--arch", "mlp:64-64-10", "--epochs", str(epochs), "--seed", "1",
                 "--name", name, "--out", f"{work}/{name}.safetensors"])
        run([agentctl, "keys", "generate", "--out", f"{work}/keys", "--name", "sim"])
        started = time.time()
        for i in range(a.agents):
            d = f"{work}/a{i:03d}"
            os.makedirs(d)
            with open(f"{d}/agentd.toml", "w") as f:
                f.write(f"""[agent]
state_dir = "{d}/state"
socket = "{d}/agentd.sock"
socket_group = ""
release_startup_pages = false
[serving]
workers = 1
[model]
initial = "{work}/base.safetensors"
precision = "fp32"
[learn]
auto = false
[drift]
enabled = false
[mqtt]
broker = "{url}"
fleet = "sim"
device = "sim-{i:03d}"
groups = ["g{i % 5}"]
[deploy]
trusted_keys = ["{work}/keys/sim.pub"]
health_seconds = {a.health_seconds}
""")
            procs.append(subprocess.Popen([agentd, "--config", f"{d}/agentd.toml"], stdout=subprocess.DEVNULL,
                                          stderr=open(f"{d}/agentd.log", "w")))
        # Every device online in the retained status.
        online = 0
        while time.time() - started < 120:
            r = run([agentctl, "fleet", "status", "--broker", url, "--fleet", "sim", "--json", "--wait", "1"])
            online = sum(1 for s in json.loads(r.stdout or "{}").values() if s.get("state") == "online")
            if online == a.agents:
                break
        up = time.time() - started
        print(f"{a.agents} agents online in {up:.1f} s ({online} online)")
        rss = 0
        for p in procs:
            with open(f"/proc/{p.pid}/statm") as f:
                rss += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        # Idle traffic: bytes_sent moves with telemetry (60 s default), status and replies.
        cpu0 = cpu_seconds(broker.pid)
        r = run([agentctl, "fleet", "deploy", f"{work}/next.safetensors", "--key", f"{work}/keys/sim.key", "--broker", url,
                 "--fleet", "sim", "--target", "all", "--canary", "0", "--wait", "60", "--json"])
        cpu1 = cpu_seconds(broker.pid)
        report = json.loads(r.stdout)
        applied = sum(1 for d in report["devices"] if d["status"] == "applied")
        size = os.path.getsize(f"{work}/next.safetensors")
        print(f"deployment of {size} bytes to {a.agents} agents: {applied} applied; rollout {report['rollout_seconds']:.2f} s "
              f"(signing, publishing, verification, activation, {a.health_seconds:g} s health gate, results) "
              f"of {report['seconds']:.2f} s with discovery; broker CPU {cpu1 - cpu0:.2f} s")
        print(f"agents' resident memory: {rss / a.agents / 2**20:.1f} MiB each")
        # One agent's telemetry message, to state the idle traffic at the default interval.
        sub = subprocess.run(["mosquitto_sub", "-p", str(port), "-t", "edge/sim/sim-000/telemetry", "-C", "1", "-W", "90"],
                             capture_output=True, text=True) if shutil.which("mosquitto_sub") else None
        if sub and sub.stdout:
            payload = len(sub.stdout.strip().encode())
            topic = len("edge/sim/sim-000/telemetry")
            # PUBLISH: fixed header 1 + remaining length 2-3, topic length 2 + topic, packet id 2; PUBACK back: 4.
            publish = 1 + 2 + 2 + topic + 2 + payload
            per_day_telemetry = 86400 / 60 * (publish + 4)
            pings = 86400 / 30 * (2 + 2)
            print(f"idle MQTT traffic per agent at telemetry_interval_s = 60, keepalive_s = 30: telemetry {publish} bytes a report "
                  f"(payload {payload}), {per_day_telemetry / 1e6:.2f} MB a day with PUBACKs, pings {pings / 1e3:.1f} kB: "
                  f"{(per_day_telemetry + pings) / 1e6:.2f} MB a day both ways")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if broker:
            broker.terminate()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")


if __name__ == "__main__":
    main()
