#!/usr/bin/env bash
# Instructions per timer operation under callgrind, for n = 1e3 .. 1e6 timers: n scheduled,
# n/2 cancelled, n/2 fired (benches/scale.rs --timer-ops N). Instruction counts do not
# depend on caches or noise, so they show the queue's own growth with n, which should stay
# within O(log n).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null 2>&1 || { echo "timer_ops.sh: valgrind is not installed" >&2; exit 1; }
bin=$(cargo bench --bench scale --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "timer_ops.sh: no scale bench binary" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%9s %14s %12s %12s\n' n instructions "per timer" "/ log2 n"
for n in 1000 10000 100000 1000000; do
    valgrind --tool=callgrind --toggle-collect='*timer_ops*' \
        --callgrind-out-file="$work/out.$n" "$bin" --timer-ops "$n" >/dev/null 2>&1
    total=$(callgrind_annotate "$work/out.$n" | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
    awk -v n="$n" -v t="$total" 'BEGIN { l = log(n) / log(2); printf "%9d %14d %12.1f %12.2f\n", n, t, t / n, t / n / l }'
done
