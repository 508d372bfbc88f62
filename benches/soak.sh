#!/usr/bin/env bash
# Soak: one relay process under a steady load for a long time, sampled every second, to show
# that nothing grows that should not (memory, file descriptors) and nothing is dropped.
#
# The load is `duet-loadtest run` against the relay: CALLS concurrent E2EE calls of PROFILE
# media for DURATION. The default, 160 mixed calls, is 80% of the measured capacity in the
# README's Capacity table ("at least 200" concurrent mixed calls with loss < 0.5%, p99 < 20 ms
# on this 2-core box). Every second the script records the relay's RSS (/proc/PID/status),
# open descriptors (/proc/PID/fd), and from its /metrics the sessions and the media dropped.
#
# Verdict (printed and written to $OUT/summary.md):
#   - RSS growth after warm-up: the median RSS of the last minute over the median RSS of the
#     minute after WARMUP seconds; < 5% passes.
#   - descriptor leak: the descriptors after the load ended over those before it started
#     (the calls left, so the same count is expected); the peak during the run beside it.
#   - the load tester's own report: loss, p99, calls failed.
#
# Usage: benches/soak.sh            (30 minutes; not a CI test)
# Env:   DURATION=30m CALLS=160 PROFILE=mixed RAMP=50/s WARMUP=120 (s)
#        OUT=target/bench-soak  SKIP_BUILD=1 (reuse the binaries)  PROFILE_DIR=release (debug:
#        a functional check of this script only)
# Traffic stays on 127.0.0.1; every process is bounded by `timeout`; a trap kills what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30m}
CALLS=${CALLS:-160}
PROFILE=${PROFILE:-mixed}
RAMP=${RAMP:-50/s}
WARMUP=${WARMUP:-120}
OUT=${OUT:-target/bench-soak}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

to_secs() {
  case "$1" in
    *h) echo $((${1%h} * 3600)) ;;
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}
DUR_S=$(to_secs "$DURATION")

PROFILE_DIR=${PROFILE_DIR:-release}
if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --profile "$([[ $PROFILE_DIR == debug ]] && echo dev || echo "$PROFILE_DIR")" \
    --locked -p duet-relay -p duet-loadtest
fi
RELAY=target/$PROFILE_DIR/duet-relay
LT=target/$PROFILE_DIR/duet-loadtest

PIDS=()
cleanup() { stop_relay; for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# shellcheck source=lib/relay.sh
source benches/lib/relay.sh
start_relay $((DUR_S + 600))
echo "relay pid $RPID quic $QUIC ops $OPS"

metric() { # name -> sum of the series' values
  curl -s --max-time 1 "http://$OPS/metrics" | awk -v n="$1" '$1 ~ "^"n"({|$)" {s += $2} END {print s + 0}'
}
sample() {
  local rss fds
  rss=$(awk '/^VmRSS/ {print $2 * 1024}' "/proc/$RPID/status" 2>/dev/null || echo 0)
  fds=$(ls "/proc/$RPID/fd" 2>/dev/null | wc -l)
  echo "$(date +%s),$rss,$fds,$(metric duet_sessions),$(metric duet_media_dropped_total),$(metric duet_fastpath_dropped_total)"
}

echo "unix_s,rss_bytes,fds,sessions,media_dropped,fastpath_dropped" >"$OUT/samples.csv"
FDS_BEFORE=$(ls "/proc/$RPID/fd" | wc -l)
T0=$(date +%s)
timeout $((DUR_S + 300)) "$LT" --relay "$QUIC" --cert "$DATA/cert.pem" \
  --token-key-file "$DATA/token-signing-key" --relay-pid "$RPID" --relay-metrics "$OPS" \
  --calls "$CALLS" --profile "$PROFILE" --ramp "$RAMP" --duration "$DURATION" \
  --progress off --report "$OUT/loadtest.json" >"$OUT/loadtest.out" 2>&1 &
LPID=$!
PIDS+=("$LPID")
while kill -0 "$LPID" 2>/dev/null; do
  sample >>"$OUT/samples.csv"
  sleep 1
done
wait "$LPID" && LT_RC=0 || LT_RC=$?
sleep 3
FDS_AFTER=$(ls "/proc/$RPID/fd" | wc -l)
T1=$(date +%s)

python3 - "$OUT" "$T0" "$WARMUP" "$FDS_BEFORE" "$FDS_AFTER" "$LT_RC" "$CALLS" "$PROFILE" "$DURATION" <<'EOF'
import csv, json, statistics, sys
out, t0, warm, fb, fa, rc, calls, profile, dur = sys.argv[1:]
t0, warm = int(t0), int(warm)
rows = list(csv.DictReader(open(f"{out}/samples.csv")))
def med(rs): return statistics.median(int(r["rss_bytes"]) for r in rs) if rs else float("nan")
after_warm = [r for r in rows if warm <= int(r["unix_s"]) - t0 < warm + 60]
last = rows[-60:]
growth = (med(last) / med(after_warm) - 1) * 100 if after_warm else float("nan")
peak_fds = max(int(r["fds"]) for r in rows)
try:
    rep = json.load(open(f"{out}/loadtest.json"))
    allm = rep["media"]["all"]
    loss = round(100 * allm["loss_ratio"], 3)
    p99 = allm["latency"]["p99_ms"]
    failed = rep["calls"]["failed"]
except Exception as e:
    loss = p99 = failed = f"no report ({e})"
lines = [
    f"soak: {calls} {profile} calls for {dur}, {len(rows)} samples (one a second)",
    f"rss after warm-up (median of {warm}-{warm+60} s): {med(after_warm)/2**20:.1f} MiB; last minute: {med(last)/2**20:.1f} MiB; growth {growth:+.2f}% ({'PASS' if growth < 5 else 'FAIL'} < 5%)",
    f"descriptors: {fb} before, {fa} after the load, peak {peak_fds} ({'PASS' if int(fa) <= int(fb) else 'LEAK?'})",
    f"sessions peak: {max(int(float(r['sessions'])) for r in rows)}; media dropped by the relay: {rows[-1]['media_dropped']} (QUIC), {rows[-1]['fastpath_dropped']} (fast path)",
    f"load tester (exit {rc}): frame loss {loss}%, one-way p99 {p99} ms, calls failed {failed}",
]
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "samples: $OUT/samples.csv; summary: $OUT/summary.md ($((T1 - T0)) s)"
