#!/usr/bin/env bash
# User-space instructions per echoed datagram of the in-process echo servers of
# `cargo bench --bench echo`: (a) twine, (b) std blocking, (c) mio + recvmmsg/sendmmsg,
# (d) tokio. Each runs under callgrind (kernel time not collected) twice, for N1 and N2
# echoes; the difference of the two counts divided by the difference in echoes cancels
# startup and shutdown.
#
# Only the server's thread counts: callgrind writes one file per thread
# (--separate-threads=yes) and the server's is the one that ran `serve_<name>`. The load
# generator's thread is counted apart, shown for reference, and not included.
#
# Then the cost of the per-datagram options, apart: (a-ts) is (a) with receive timestamps
# on, (a-meta) with every per-datagram option on (the arrival address, replies from it,
# the TOS byte received, timestamps); each against (a).
#
# Usage: bash benches/echo/callgrind.sh [--write]    (N1=20000 N2=120000 by default)
#   --write   also put the result in BENCHMARKS.md, replacing the section an earlier
#             --write left there (`cargo bench --bench echo` keeps that section)
set -euo pipefail
cd "$(dirname "$0")/../.."

write=0
case "${1:-}" in
    --write) write=1 ;;
    "") ;;
    *)
        echo "usage: bash benches/echo/callgrind.sh [--write]" >&2
        exit 2
        ;;
esac

N1=${N1:-20000}
N2=${N2:-120000}
SERVERS=(twine twine_plain std mio tokio twine_ts twine_meta)
LABELS=("(a) twine" "(a') twine, no GSO" "(b) std blocking" "(c) mio + mmsg" "(d) tokio"
    "(a-ts) timestamps" "(a-meta) all options")

fail() {
    echo "callgrind.sh: $*" >&2
    exit 1
}

command -v valgrind >/dev/null 2>&1 || fail "valgrind is not installed"
bin=$(cargo bench --bench echo --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -n 1)
[ -n "$bin" ] && [ -x "$bin" ] || fail "cargo bench --bench echo --no-run named no binary"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Printed, and kept for --write.
say() {
    echo "$@" | tee -a "$work/report.txt"
}

# measure NAME COUNT: prints "ECHOES SERVER_IR OTHER_IR".
measure() {
    local name=$1 count=$2 base="$work/$1.$2"
    if ! valgrind --tool=callgrind --collect-systime=no --separate-threads=yes \
        --callgrind-out-file="$base" "$bin" --only "$name" --count "$count" \
        >"$base.log" 2>&1; then
        cat "$base.log" >&2
        fail "$name: valgrind failed"
    fi
    local echoes server=0 other=0 file ir
    echoes=$(sed -n "s/^$name: \([0-9]*\) echoes.*/\1/p" "$base.log")
    [ -n "$echoes" ] || fail "$name: no summary line in $base.log"
    for file in "$base"-*; do
        ir=$(sed -n 's/^summary: //p' "$file")
        if grep -q "serve_$name\b" "$file"; then
            server=$((server + ir))
        else
            other=$((other + ir))
        fi
    done
    [ "$server" -gt 0 ] || fail "$name: no thread ran serve_$name"
    echo "$echoes $server $other"
}

say "callgrind: user-space instructions per echoed datagram (runs of $N1 and $N2 echoes, window 64;"
say "the difference divided by the difference in echoes). Server thread only: the load"
say "generator's thread is measured apart, shown for reference and not included."
say
say "$(printf '%-20s %16s %22s' "server" "instr/datagram" "load gen instr/dgram")"
declare -A per
for i in "${!SERVERS[@]}"; do
    name=${SERVERS[$i]}
    read -r e1 s1 o1 <<<"$(measure "$name" "$N1")"
    read -r e2 s2 o2 <<<"$(measure "$name" "$N2")"
    [ "$e2" -gt "$e1" ] || fail "$name: $e2 echoes is not more than $e1"
    per[$name]=$(awk -v a="$s1" -v b="$s2" -v n="$((e2 - e1))" 'BEGIN { printf "%.1f", (b - a) / n }')
    gen=$(awk -v a="$o1" -v b="$o2" -v n="$((e2 - e1))" 'BEGIN { printf "%.1f", (b - a) / n }')
    say "$(printf '%-20s %16s %22s' "${LABELS[$i]}" "${per[$name]}" "$gen")"
done
say
for other in std mio tokio; do
    say "$(awk -v a="${per[twine]}" -v b="${per[$other]}" -v o="$other" \
        'BEGIN { printf "twine / %s: %.2f", o, a / b }')"
done
say "$(awk -v a="${per[twine_plain]}" -v b="${per[mio]}" \
    'BEGIN { printf "twine, no GSO / mio: %.2f", a / b }')"
say "$(awk -v a="${per[twine]}" -v b="${per[mio]}" \
    'BEGIN { r = a / b; printf "target: twine / mio (c) <= 1.05: %s", (r <= 1.05 ? "met" : "NOT met") }')"

say
say "The per-datagram options, against (a) (shown apart, not toward the target):"
for other in twine_ts twine_meta; do
    say "$(awk -v a="${per[$other]}" -v b="${per[twine]}" -v o="$other" \
        'BEGIN { printf "%s / twine: %.2f (+%.1f instructions per echo)", o, a / b, a - b }')"
done

if [ "$write" = 1 ]; then
    md=BENCHMARKS.md
    [ -f "$md" ] || fail "$md does not exist yet: run cargo bench --bench echo first"
    {
        # Everything but an earlier section.
        awk '/^<!-- callgrind.sh -->$/ { skip = 1 } !skip { print } /^<!-- \/callgrind.sh -->$/ { skip = 0 }' "$md" |
            sed -e :a -e '/^\n*$/{$d;N;ba' -e '}'
        echo
        echo "<!-- callgrind.sh -->"
        echo "## Instructions per datagram (callgrind)"
        echo
        echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') with \`bash benches/echo/callgrind.sh --write\`"
        echo "(valgrind $(valgrind --version | sed 's/^valgrind-//'), \`--collect-systime=no\`: user space only):"
        echo
        echo '```text'
        cat "$work/report.txt"
        echo '```'
        echo "<!-- /callgrind.sh -->"
    } >"$work/md"
    cp "$work/md" "$md"
    echo "written: $md"
fi
