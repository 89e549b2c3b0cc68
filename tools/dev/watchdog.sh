#!/usr/bin/env bash
# watchdog.sh SECONDS COMMAND...: runs COMMAND; if it is still running after SECONDS, prints every
# thread's stack of the test processes under it (gdb, if installed), kills it and fails.
# `make test` runs `swift test` under it so that a hang ends with the place it hung, well inside
# CI's time limit, instead of a run that is cut off with nothing to show.
set -uo pipefail
limit=$1
shift
"$@" &
child=$!
(
  # Every process under the command, children first.
  descendants() {
    local p
    for p in $(ps -eo pid=,ppid= | awk -v parent="$1" '$2 == parent { print $1 }'); do
      descendants "$p"
      echo "$p"
    done
  }
  # Sleep in slices so that this subshell ends soon after the command does.
  waited=0
  while [ "$waited" -lt "$limit" ] && kill -0 "$child" 2>/dev/null; do sleep 5; waited=$((waited + 5)); done
  kill -0 "$child" 2>/dev/null || exit 0
  echo "watchdog: '$*' still running after ${limit} s; the stacks of its test processes follow" >&2
  tree=$(descendants "$child")
  for pid in "$child" $tree; do
    case "$(readlink /proc/"$pid"/exe 2>/dev/null)" in
      *.xctest)
        echo "watchdog: process $pid: $(tr '\0' ' ' < /proc/"$pid"/cmdline 2>/dev/null)" >&2
        if command -v gdb >/dev/null; then
          timeout 120 gdb -p "$pid" -batch -ex 'thread apply all bt 30' 2>/dev/null | grep -E '^(Thread|#)' >&2
        else
          echo "watchdog: no gdb, no stacks" >&2
        fi ;;
    esac
  done
  echo "watchdog: the processes under it:" >&2
  for pid in $tree; do echo "  $pid $(tr '\0' ' ' < /proc/"$pid"/cmdline 2>/dev/null)" >&2; done
  # The daemons and brokers the tests started go with it.
  kill -KILL "$child" $(descendants "$child") 2>/dev/null
  exit 0
) &
guard=$!
wait "$child"
status=$?
kill "$guard" 2>/dev/null
wait "$guard" 2>/dev/null
exit "$status"
