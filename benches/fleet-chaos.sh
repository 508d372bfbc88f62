#!/usr/bin/env bash
# Fleet failover under load: three release `duet-relay` processes on loopback sharing one
# token key and certificate, `duet-loadtest` placing E2EE calls over all three (tokens list
# primary + fallbacks), SIGKILL of node n1 mid-run; the report's `media_gap` and
# `calls.migrated` are the figures (benches/RESULTS.md "Fleet failover").
#
#   flock /work/notes/bench.lock benches/fleet-chaos.sh
#
# Env: CALLS (100), PROFILE (audio), DURATION (20s), KILL_AT (10s), SKIP_BUILD=1, OUT
# (target/bench-fleet-chaos), EXTRA (more duet-loadtest flags, e.g. "--dead-silence 300ms").
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${CALLS:-100}
PROFILE=${PROFILE:-audio}
DURATION=${DURATION:-20s}
KILL_AT=${KILL_AT:-10s}
OUT=${OUT:-target/bench-fleet-chaos}
EXTRA=${EXTRA:-}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -q -p duet-relay --bin duet-relay -p duet-loadtest
fi
RELAY=target/release/duet-relay
LOADTEST=target/release/duet-loadtest
rm -rf "$OUT"
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
echo "relay-ops-token-for-the-chaos-bench" >"$OUT/ops-token"
for i in 1 2 3; do
  d=$OUT/n$i
  mkdir -p "$d"
  if [ "$i" -gt 1 ]; then
    for f in token-signing-key token-key.pub cert.pem key.pem; do cp "$OUT/n1/$f" "$d/$f"; done
  fi
  RUST_LOG=warn "$RELAY" serve --listen "127.0.0.1:$((24400 + 10 * i))" --ops-listen "127.0.0.1:$((29090 + i))" \
    --data-dir "$d" --node-id "n$i" --ops-token-file "$OUT/ops-token" >"$d/out.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    [ -s "$d/cert.pem" ] && [ -s "$d/token-signing-key" ] && grep -q "ops http" "$d/out.log" && break
    sleep 0.1
  done
  grep -q "ops http" "$d/out.log" || { echo "node n$i did not start" >&2; cat "$d/out.log" >&2; exit 1; }
done
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
# shellcheck disable=SC2086
"$LOADTEST" --relay n1=127.0.0.1:24410 --relay n2=127.0.0.1:24420 --relay n3=127.0.0.1:24430 \
  --cert "$OUT/n1/cert.pem" --token-key-file "$OUT/n1/token-signing-key" \
  --calls "$CALLS" --profile "$PROFILE" --duration "$DURATION" \
  --chaos "kill:${pids[0]}@$KILL_AT" --slo "gap_p99<1s,dropped<=0" \
  --report "$OUT/report.json" $EXTRA || echo "duet-loadtest exit $?"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("chaos:", json.dumps(r.get("chaos")))
print("media_gap:", json.dumps(r.get("media_gap")))
c = r.get("calls", {})
print("calls:", json.dumps({k: c.get(k) for k in ("established", "failed", "migrated", "dropped_by_reason", "per_node")}))
print("slo:", json.dumps(r.get("slo")))
EOF
