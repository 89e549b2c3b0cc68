#!/usr/bin/env bash
# watchdog.sh SECONDS COMMAND...: runs COMMAND; if it is still running after SECONDS, prints every
# thread's stack of the test processes under it (gdb, if installed), kills it and everything it
# started, and fails. `make test` runs `swift test` under it so that a hang ends with the place it
# hung, well inside CI's time limit, instead of a run that is cut off with nothing to show.
# An interrupt (Ctrl-C, a cancelled CI job) takes the whole tree down too.
set -uo pipefail
limit=$1
shift
case "$limit" in
  '' | *[!0-9]*) echo "watchdog: SECONDS must be a positive whole number (got '$limit')" >&2; exit 2 ;;
esac
[ "$limit" -gt 0 ] || { echo "watchdog: SECONDS must be positive" >&2; exit 2; }

# Every process under $1, children first, from /proc (no ps needed).
descendants() {
  local parent=$1 stat rest ppid p
  for stat in /proc/[0-9]*/stat; do
    rest=$(cat "$stat" 2>/dev/null) || continue
    rest=${rest##*) }            # after the command name, which may hold spaces: "S PPID ..."
    ppid=${rest#* }
    ppid=${ppid%% *}
    if [ "$ppid" = "$parent" ]; then
      p=${stat#/proc/}
      p=${p%/stat}
      descendants "$p"
      echo "$p"
    fi
  done
}

"$@" &
child=$!

kill_tree() {
  kill -KILL "$child" $(descendants "$child") 2>/dev/null
}
trap 'kill_tree; exit 130' INT
trap 'kill_tree; exit 143' TERM

(
  trap - INT TERM
  # Sleep in slices so that this subshell ends soon after the command does.
  waited=0
  while [ "$waited" -lt "$limit" ] && kill -0 "$child" 2>/dev/null; do
    sleep 5 </dev/null >/dev/null 2>&1
    waited=$((waited + 5))
  done
  kill -0 "$child" 2>/dev/null || exit 0
  echo "watchdog: '$*' still running after ${limit} s; the stacks of its test processes follow" >&2
  tree=$(descendants "$child")
  for pid in "$child" $tree; do
    case "$(readlink /proc/"$pid"/exe 2>/dev/null)" in
      *.xctest)
        echo "watchdog: process $pid: $(tr '\0' ' ' < /proc/"$pid"/cmdline 2>/dev/null)" >&2
        if command -v gdb >/dev/null; then
          stacks=$(timeout 120 gdb -nx -iex 'set debuginfod enabled off' -p "$pid" -batch -ex 'thread apply all bt 30' 2>&1 \
                   | grep -E '^(Thread|#)')
          if [ -n "$stacks" ]; then
            echo "$stacks" >&2
          else
            echo "watchdog: gdb could not read the stacks (ptrace_scope $(cat /proc/sys/kernel/yama/ptrace_scope 2>/dev/null || echo '?'))" >&2
          fi
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
) </dev/null &
guard=$!
wait "$child"
status=$?
kill "$guard" 2>/dev/null
wait "$guard" 2>/dev/null
exit "$status"
