#!/usr/bin/env bash
# Runs each libFuzzer target for FUZZ_SECONDS with its seed corpus (Tests/Fuzz/<target>) and a
# working corpus under .fuzz/<target>; prints total executions and executions per second per
# target; exits non-zero if any target found a crash, a leak or a timeout.
# Usage (from the repository root, after `make fuzz-build`): tools/fuzz/run.sh SECONDS BIN_DIR [target...]
set -u
seconds=$1
bin=$2
shift 2
# name:executable:max_len:dictionary:detect_leaks. The config target does not check leaks: TOMLKit's
# TOMLTable(string:) never frees its error record (a few bytes per parse, more on a parse error).
all="model:FuzzModel:65536:model:1 onnx:FuzzONNX:65536:onnx:1 infer-codec:FuzzInferCodec:16384:json:1 api-bodies:FuzzAPIBodies:16384:json:1 config:FuzzConfig:16384:toml:0"
wanted=${*:-model onnx infer-codec api-bodies config}
failed=0
summary=""
for spec in $all; do
    IFS=: read -r name exe maxlen dict leaks <<<"$spec"
    [[ " $wanted " == *" $name "* ]] || continue
    work=.fuzz/$name
    mkdir -p "$work/corpus"
    log=$work/run.log
    echo "fuzz $name: $seconds s (log $log)"
    # The Swift runtime's backtracer would hold a crashing input for tens of seconds; libFuzzer reports it itself.
    # detect_leaks also for ASan's check at exit, which the libFuzzer flag does not cover.
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS="detect_leaks=$leaks${ASAN_OPTIONS:+:$ASAN_OPTIONS}" "$bin/$exe" "$work/corpus" "Tests/Fuzz/$name" \
        -max_total_time="$seconds" -rss_limit_mb=4096 -max_len="$maxlen" -timeout=10 -detect_leaks="$leaks" \
        -dict="tools/fuzz/dicts/$dict.dict" -artifact_prefix="$work/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    line=$(printf '%-12s %6s s  %12s executions  %8s exec/s' "$name" "$seconds" "${execs:-?}" "${rate:-?}")
    if [ $rc -ne 0 ]; then
        failed=1
        line="$line  FAILED (exit $rc): $(ls -t "$work" | grep -E '^(crash|leak|timeout|oom|slow-unit)-' | head -1)"
        grep -m1 -E 'ERROR: |Fatal error|panic|SUMMARY' "$log" | sed 's/^/    /'
    fi
    summary="$summary$line"$'\n'
done
printf '\n%s' "$summary"
exit $failed
