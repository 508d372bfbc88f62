#!/usr/bin/env bash
# Floods while calls run: one release relay process, CALLS concurrent calls from
# `duet-loadtest run`, and, in the second of two runs, every flood of `duet_testkit::abuse`
# at once (the `floods` example of duet-testkit): garbage UDP at the QUIC port and at the
# fast-path port (GARBAGE_RATE datagrams/s each, from 8 sockets each), joins with forged
# tokens (unknown key id, wrong key under the trusted id, junk; 4 at a time), and a joined
# client sending 2,000 Signals/s. Floods start once every call is up and last FLOOD_SECS.
#
# Recorded (printed and in $OUT/summary.md): each run's loss, p99 and failed calls (the load
# tester's report), the bytes the relay sent back to the flooding sockets (fast path: must be
# 0; QUIC: stateless resets and version negotiation, each smaller than its trigger), the
# forged joins accepted (must be 0) and refused by reason, the signals that reached the
# flooder's peer, the relay's counters of each refusal, and its RSS before and after.
#
# Usage: benches/floods.sh                  (not a CI test; about 2 minutes after the build)
# Env:   CALLS=100 PROFILE=audio DURATION=20s FLOOD_SECS=10 GARBAGE_RATE=5000 TRANSPORT=quic-datagram
#        OUT=target/bench-floods SKIP_BUILD=1 (reuse the binaries)
# Traffic stays on 127.0.0.1; every process is bounded by `timeout`; a trap kills what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${CALLS:-100}
PROFILE=${PROFILE:-audio}
DURATION=${DURATION:-20s}
FLOOD_SECS=${FLOOD_SECS:-10}
GARBAGE_RATE=${GARBAGE_RATE:-5000}
TRANSPORT=${TRANSPORT:-quic-datagram}
OUT=${OUT:-target/bench-floods}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [[ -z "${SKIP_BUILD:-}" ]]; then
  cargo build --release --locked -p duet-relay -p duet-loadtest
  cargo build --release --locked -p duet-testkit --example floods
fi
RELAY=target/release/duet-relay
LT=target/release/duet-loadtest
FLOODS=target/release/examples/floods

PIDS=()
cleanup() { stop_relay; for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# shellcheck source=lib/relay.sh
source benches/lib/relay.sh
start_relay 900
echo "relay pid $RPID quic $QUIC fast path $FP ops $OPS"
rss() { awk '/^VmRSS/ {print $2 * 1024}' "/proc/$RPID/status"; }

run() { # name, then extra loadtest flags
  local name=$1
  shift
  timeout 300 "$LT" --relay "$QUIC" --cert "$DATA/cert.pem" \
    --token-key-file "$DATA/token-signing-key" --relay-pid "$RPID" --relay-metrics "$OPS" \
    --calls "$CALLS" --profile "$PROFILE" --duration "$DURATION" --transport "$TRANSPORT" \
    --progress off --report "$OUT/$name.json" "$@" >"$OUT/$name.out" 2>&1
}

echo "baseline: $CALLS $PROFILE calls for $DURATION, no floods"
RSS0=$(rss)
run baseline || echo "loadtest exit $? (baseline)"
curl -s --max-time 2 "http://$OPS/metrics" >"$OUT/metrics-before.txt"
RSS1=$(rss)

echo "flood: the same calls, floods for ${FLOOD_SECS}s once they are up"
run flood &
LPID=$!
PIDS+=("$LPID")
# Calls start at the default 50/s: every call is up after CALLS/50 s; then a margin.
sleep $((CALLS / 50 + 3))
RSS2=$(rss)
timeout $((FLOOD_SECS + 120)) "$FLOODS" "$QUIC" "$FP" "$DATA/cert.pem" "$DATA/token-signing-key" \
  "$FLOOD_SECS" "$GARBAGE_RATE" >"$OUT/floods.json" 2>"$OUT/floods.err" || echo "floods exit $?"
RSS3=$(rss)
wait "$LPID" && LT_RC=0 || LT_RC=$?
curl -s --max-time 2 "http://$OPS/metrics" >"$OUT/metrics-after.txt"
sleep 5
RSS4=$(rss)

python3 - "$OUT" "$CALLS" "$PROFILE" "$DURATION" "$FLOOD_SECS" "$GARBAGE_RATE" "$TRANSPORT" "$LT_RC" \
  "$RSS0" "$RSS1" "$RSS2" "$RSS3" "$RSS4" <<'EOF'
import json, re, sys
out, calls, profile, dur, fsecs, rate, transport, rc, *rss = sys.argv[1:]
rss = [int(x) / 2**20 for x in rss]
def lt(name):
    try:
        r = json.load(open(f"{out}/{name}.json"))
        m = r["media"]["all"]
        return f"loss {100 * m['loss_ratio']:.3f}%, p99 {m['latency']['p99_ms']} ms, calls failed {r['calls']['failed']}"
    except Exception as e:
        return f"no report ({e})"
def metrics(path):
    d = {}
    for line in open(path):
        if line.startswith("#") or " " not in line:
            continue
        k, v = line.rsplit(" ", 1)
        try:
            d[k] = float(v)
        except ValueError:
            pass
    return d
before, after = metrics(f"{out}/metrics-before.txt"), metrics(f"{out}/metrics-after.txt")
def delta(prefix):
    keys = sorted(k for k in after if k.startswith(prefix))
    return {k[len(prefix):] or "": after[k] - before.get(k, 0) for k in keys if after[k] - before.get(k, 0)}
try:
    fl = json.load(open(f"{out}/floods.json"))
except Exception as e:
    fl = {"error": str(e)}
lines = [
    f"floods: {calls} {profile} calls ({transport}) for {dur}; floods for {fsecs} s: garbage {rate}/s at each port, forged joins, 2,000 signals/s",
    f"baseline run: {lt('baseline')}",
    f"flood run:    {lt('flood')} (loadtest exit {rc})",
    f"floods: {json.dumps(fl)}",
    f"relay counters during the flood run: refusals {delta('duet_refusals_total')}",
    f"  fast-path drops {delta('duet_fastpath_dropped_total')}",
    f"  signals dropped {delta('duet_signals_dropped_total')}",
    f"  handshakes {delta('duet_quic_handshakes_total')}",
    f"relay RSS MiB: start {rss[0]:.1f}, after baseline {rss[1]:.1f}, calls up {rss[2]:.1f}, flood end {rss[3]:.1f}, 5 s after the calls {rss[4]:.1f}",
]
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
