#!/usr/bin/env bash
# `make run`: a private mosquitto on a free loopback port, the development config pointed at it,
# a development signing key, then agentd in the foreground with the demo model. Ctrl-C drains and
# stops agentd; the broker stops with it.
set -euo pipefail
dist=$1 model=$2
root=$(pwd)
mkdir -p .agentd
[ -f .agentd/keys/dev.key ] || "$dist/agentctl" keys generate --out .agentd/keys --name dev >/dev/null

# A free port: one nothing answers on (bash's /dev/tcp connect fails).
port=""
for _ in $(seq 1 50); do
  p=$(( 20000 + RANDOM % 40000 ))
  if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || { echo "make run: no free loopback port found for mosquitto" >&2; exit 1; }
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > .agentd/mosquitto.conf
"$mosquitto_bin" -c .agentd/mosquitto.conf > .agentd/mosquitto.log 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done

# The development config is written anew each run (the broker's port changes).
cat > .agentd/agentd.toml <<TOML
[agent]
state_dir = "$root/.agentd/state"
socket = "$root/.agentd/agentd.sock"
socket_group = ""

[model]
initial = "$root/$model"
calibration = "$root/tools/data/digits.csv"
adaptive = true

[mqtt]
broker = "mqtt://127.0.0.1:$port"
fleet = "dev"
device = "$(hostname | tr -c 'A-Za-z0-9_.\n-' '_')"
groups = ["lab"]
telemetry_interval_s = 10

[deploy]
trusted_keys = ["$root/.agentd/keys/dev.pub"]
health_seconds = 5
TOML

sock="$root/.agentd/agentd.sock"
echo "agentd starting in the foreground (Ctrl-C drains and stops it), with a private mosquitto on port $port. In another terminal:"
echo "  mosquitto_sub -p $port -t 'edge/#' -v"
echo "  $dist/agentctl status --socket $sock"
echo "  $dist/agentctl infer --socket $sock --input tools/data/digits.csv"
echo "  $dist/agentctl fleet status --broker mqtt://127.0.0.1:$port --fleet dev"
echo "  $dist/agentctl fleet cmd all status --broker mqtt://127.0.0.1:$port --fleet dev"
echo "  $dist/agentctl fleet deploy $model --key .agentd/keys/dev.key --target all --broker mqtt://127.0.0.1:$port --fleet dev"
"$dist/agentd" --config .agentd/agentd.toml
