#!/usr/bin/env bash
# System benchmark, side by side in one run on the same machine:
#   1. the plain C forwarder of ../shared/baseline (fwd + loadgen), K pairs at PPS total, SIZE bytes;
#   2. duet-relay (QUIC datagram path) in its own process, driven by duet-loadtest with the
#      audio profile: CALLS calls, each endpoint 50 packets/s of 100-200 B, so the offered rate
#      is CALLS*100 packets/s. Run the baseline at that same rate (PPS defaults to it).
# Prints relay CPU microseconds per forwarded packet for both, and their ratio.
# Usage: benches/run-system.sh            (env: CALLS=200 D=10 SIZE=160 OUT=target/bench-system)
# Traffic stays on 127.0.0.1; every run is bounded by D seconds plus a grace.
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=${CALLS:-200}; D=${D:-10}; SIZE=${SIZE:-160}; PPS=${PPS:-$((CALLS * 100))}
OUT=${OUT:-target/bench-system}; mkdir -p "$OUT"
BASE=$(cd ../shared/baseline && pwd)

cargo build --release -p duet-relay -p duet-loadtest >&2

echo "== C baseline: $CALLS pairs, $SIZE B, $PPS pps, ${D}s" >&2
WORK="$OUT/baseline"; rm -rf "$WORK"; cp -r "$BASE" "$WORK"
(cd "$WORK" && D=$D REPS=1 PORT=40000 CASES="same:$CALLS:$SIZE:$PPS" ./run.sh) | tee "$OUT/baseline.txt" >&2
base_us=$(awk -F'relay_cpu_us_per_pkt=' '/^case=same/{split($2,a," "); print a[1]}' "$OUT/baseline.txt")
base_loss=$(grep -o 'loss_pct=[0-9.]*' "$OUT/baseline.txt" | head -1 | cut -d= -f2)

echo "== duet-relay (QUIC datagrams): $CALLS audio calls, ${D}s" >&2
DATA="$OUT/relay-data"; rm -rf "$DATA"
./target/release/duet-relay serve --data-dir "$DATA" --listen 127.0.0.1:44330 \
  --ops-listen 127.0.0.1:49090 > "$OUT/relay.log" 2>&1 &
RPID=$!
trap 'kill $RPID 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$DATA/token-key" ] && [ -s "$DATA/cert.pem" ] && break; sleep 0.1; done
sleep 0.3
./target/release/duet-loadtest --relay 127.0.0.1:44330 --cert "$DATA/cert.pem" \
  --token-key-file "$DATA/token-key" --token-key-id default \
  --relay-pid "$RPID" --relay-metrics 127.0.0.1:49090 \
  --calls "$CALLS" --profile audio --duration "${D}s" --ramp 200/s --no-e2ee \
  --progress plain --report "$OUT/relay.json" | tee "$OUT/relay.txt" >&2
kill -TERM $RPID; wait $RPID 2>/dev/null || true
read -r duet_us duet_loss duet_kib <<<"$(python3 - "$OUT/relay.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rel = (r.get("relays") or [{}])[0]
us = rel.get("cpu_us_per_forwarded_packet")
mem = rel.get("memory_per_session_bytes")
loss = r["media"]["all"]["loss_ratio"] * 100
print("%.3f" % us if us is not None else "nan", "%.3f" % loss, "%.1f" % (mem / 1024) if mem else "nan")
PY
)"
echo
echo "| path | load | relay CPU µs/packet | ratio to C baseline | loss % |"
echo "|---|---|---|---|---|"
echo "| C baseline (fwd.c) | $CALLS pairs, ${SIZE} B, $PPS pps | $base_us | 1.00 | $base_loss |"
ratio=$(awk -v a="$duet_us" -v b="$base_us" 'BEGIN{if (b>0 && a==a+0) printf "%.2f", a/b; else print "n/a"}')
echo "| duet-relay, QUIC datagrams | $CALLS audio calls (~$PPS pps, 100-200 B) | $duet_us | $ratio | $duet_loss |"
echo
echo "duet-relay memory per session (RSS delta / sessions): $duet_kib KiB"
