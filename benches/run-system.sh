#!/usr/bin/env bash
# System benchmark: the Duet relay's raw UDP fast path and QUIC datagram path against the plain
# C forwarder of ../shared/baseline, side by side in one run on this machine, same offered load.
#
# For each case NAME:K:SIZE:PPS (K pairs, SIZE-byte UDP payloads, PPS packets/s in total):
#   1. C fwd      driven by the C loadgen                          (calibration row)
#   2. C fwd      driven by duet-loadtest udp --target baseline    (the denominator of "ratio")
#   3. duet-relay driven by duet-loadtest udp --target fastpath    (raw UDP fast path)
#   4. duet-relay driven by duet-loadtest udp --target quic        (QUIC datagrams; QUIC_CASES only)
# Every forwarder is a fresh process per row, measured by utime+stime from /proc/PID/stat; the
# ratio is relay CPU µs per forwarded packet over row 2's (same generator, same load).
# Then relay RSS per idle fast-path session: IDLE_N sessions joined and bound, no media.
#
# Usage: benches/run-system.sh
# Env:   CASES="name:K:size:pps ..."  (default: 160 B and 1200 B, 1 and 1000 pairs, see below)
#        QUIC_CASES="name:K:size:pps ..." (default: 1 and 100 pairs at 10k pps, 160 B and 1100 B:
#                   the QUIC generator is the SDK and saturates long before the relay, and the
#                   relay pins QUIC's UDP payload at 1200 B, so a 1200-byte datagram does not fit;
#                   each QUIC row has its own C fwd row at the same load for the ratio)
#        FP_WORKERS=0 (fast-path worker threads of the measured relay; 0 = the relay's default,
#                   half the CPUs, at least one: 1 on a 2-core box, like fwd.c's one thread)
#        FP_WORKERS_ALT=2 (an extra fast-path row per case with these workers, e.g. one per
#                   CPU; empty skips it)
#        D=5 (send seconds per row)  IDLE_N=1000 (0 skips)  OUT=target/bench-system
#        SKIP_BUILD=1 (reuse the binaries)  PROFILE=release (debug: functional check only)  BASE=../shared/baseline
# Traffic stays on 127.0.0.1; every process is bounded by `timeout`; a trap kills what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
FP_WORKERS=${FP_WORKERS:-0}; FP_WORKERS_ALT=${FP_WORKERS_ALT-2}
D=${D:-5}; IDLE_N=${IDLE_N:-1000}; OUT=${OUT:-target/bench-system}
CASES=${CASES-"160x1:1:160:40000 160x1000:1000:160:40000 1200x1:1:1200:30000 1200x1000:1000:1200:30000"}
QUIC_CASES=${QUIC_CASES-"160x1:1:160:10000 160x100:100:160:10000 1100x1:1:1100:10000"}
BASE=${BASE:-../shared/baseline}
mkdir -p "$OUT/bin"; OUT=$(cd "$OUT" && pwd)
LOG="$OUT/log.txt"; : > "$LOG"
ROWS="$OUT/rows.tsv"; : > "$ROWS"

PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

PROFILE=${PROFILE:-release}
if [ -z "${SKIP_BUILD:-}" ]; then
  if [ "$PROFILE" = release ]; then cargo build --release -p duet-relay -p duet-loadtest >&2
  else cargo build -p duet-relay -p duet-loadtest >&2; fi
fi
gcc -O2 -Wall -o "$OUT/bin/fwd" "$BASE/fwd.c"
gcc -O2 -Wall -o "$OUT/bin/loadgen" "$BASE/loadgen.c"
RELAY=./target/$PROFILE/duet-relay
LT=./target/$PROFILE/duet-loadtest
FWD_PORT=40300; QUIC_PORT=44400; OPS_PORT=49400; FP_PORT=45400
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HAS_FP=0; "$RELAY" serve --help 2>/dev/null | grep -q -- '--fast-path-listen' && HAS_FP=1

start_fwd() {
  "$OUT/bin/fwd" "$FWD_PORT" 127.0.0.1 > "$OUT/fwd.log" 2>&1 &
  FPID=$!; PIDS+=("$FPID"); sleep 0.2
}
stop_fwd() { kill -TERM "$FPID" 2>/dev/null || true; wait "$FPID" 2>/dev/null || true; }

# Starts a fresh duet-relay (fast path too when it has one); per-endpoint media limits raised
# far above the offered load so the relay's rate limiter never drops what fwd.c would forward.
start_relay() { # [fast-path workers]
  DATA="$OUT/relay-data"; rm -rf "$DATA"
  local fp=(); [ "$HAS_FP" = 1 ] && fp=(--fast-path-listen "127.0.0.1:$FP_PORT" --fast-path-workers "${1:-$FP_WORKERS}")
  "$RELAY" serve --data-dir "$DATA" --listen "127.0.0.1:$QUIC_PORT" --ops-listen "127.0.0.1:$OPS_PORT" \
    "${fp[@]}" --media-packets-per-sec 10000000 --media-bytes-per-sec 100000000000 \
    --max-sessions 20000 > "$OUT/relay.log" 2>&1 &
  RPID=$!; PIDS+=("$RPID")
  for _ in $(seq 100); do [ -s "$DATA/token-key" ] && [ -s "$DATA/cert.pem" ] && break; sleep 0.1; done
  sleep 0.3
}
stop_relay() { kill -TERM "$RPID" 2>/dev/null || true; wait "$RPID" 2>/dev/null || true; }

# Reads a udp report and appends a row: path K size then the measured columns.
udp_row() { # path K size json
  python3 - "$@" >> "$ROWS" <<'PY'
import json, sys
path, k, size, f = sys.argv[1:5]
try:
    r = json.load(open(f))
except Exception:
    print("\t".join([path, k, size, "n/a"] + ["n/a"] * 6)); sys.exit()
rel = r.get("relay") or {}
us = rel.get("cpu_us_per_packet")
lat = r["latency_us"]
print("\t".join([path, k, size, "%.0f" % r["offered_pps"], "%.3f" % us if us is not None else "n/a",
                 "%.3f" % r["loss_pct"], "%d / %d" % (lat["p50"], lat["p99"]), "%.2f" % r["generator_cpu_s"],
                 "%d/%d" % (r["setup"]["pairs_ready"], r["pairs"])]))
PY
}

udp_run() { # target K size pps json [extra...]
  local tgt=$1 k=$2 size=$3 pps=$4 json=$5; shift 5
  rm -f "$json"
  timeout $((D + 120)) "$LT" udp --target "$tgt" --pairs "$k" --size "$size" --pps "$pps" \
    --duration "${D}s" --report "$json" "$@" >> "$LOG" 2>&1 || echo "udp $tgt exited $?" >> "$LOG"
}

for c in $CASES; do
  IFS=: read -r name K S PPS <<<"$c"
  echo "== case $name: $K pairs, $S B, $PPS pps, ${D}s" >&2
  # 1. C fwd + C loadgen (calibration): denominator = fwd's own forwarded counter, like run.sh.
  start_fwd
  c0=$(cpu_ticks "$FPID")
  res=$(timeout $((D + 30)) "$OUT/bin/loadgen" "127.0.0.1:$FWD_PORT" "$K" "$PPS" "$D" "$S" | grep '^RESULT' || true)
  c1=$(cpu_ticks "$FPID"); stop_fwd
  echo "loadgen $name: $res" >> "$LOG"
  pk=$(grep -o 'fwd=[0-9]*' "$OUT/fwd.log" | cut -d= -f2 || echo 0)
  python3 - "$res" "$c0" "$c1" "$TCK" "${pk:-0}" "$K" "$S" >> "$ROWS" <<'PY'
import sys
res, c0, c1, tck, pk, k, s = sys.argv[1:8]
kv = dict(x.split("=", 1) for x in res.split()[1:]) if res else {}
us = (int(c1) - int(c0)) / float(tck) * 1e6 / int(pk) if int(pk) > 0 else None
g = lambda key, f: (f % float(kv[key])) if key in kv else "n/a"
print("\t".join(["C fwd <- C loadgen", k, s, g("offered_pps", "%.0f"), "%.3f" % us if us is not None else "n/a",
                 g("loss_pct", "%.3f"), g("p50_us", "%.0f") + " / " + g("p99_us", "%.0f"), g("loadgen_cpu_s", "%.2f"), "-"]))
PY
  # 2. C fwd + duet-loadtest udp (baseline protocol).
  start_fwd
  udp_run "baseline=127.0.0.1:$FWD_PORT" "$K" "$S" "$PPS" "$OUT/$name-baseline.json" --relay-pid "$FPID"
  stop_fwd
  udp_row "C fwd <- duet-loadtest" "$K" "$S" "$OUT/$name-baseline.json"
  # 3. duet-relay fast path (FP_WORKERS, then FP_WORKERS_ALT).
  if [ "$HAS_FP" = 1 ]; then
    for w in $FP_WORKERS $FP_WORKERS_ALT; do
      start_relay "$w"
      udp_run "fastpath=127.0.0.1:$QUIC_PORT" "$K" "$S" "$PPS" "$OUT/$name-fastpath-w$w.json" \
        --relay-pid "$RPID" --cert "$DATA/cert.pem" --token-key-file "$DATA/token-key"
      stop_relay
      wl=$w; [ "$w" = 0 ] && wl="default ($(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 )))"
      udp_row "duet-relay fast path, workers=$wl" "$K" "$S" "$OUT/$name-fastpath-w$w.json"
    done
  else
    printf 'duet-relay fast path\t%s\t%s\tn/a (relay has no --fast-path-listen)\tn/a\tn/a\tn/a\tn/a\tn/a\n' "$K" "$S" >> "$ROWS"
  fi
done

for c in $QUIC_CASES; do
  IFS=: read -r name K S PPS <<<"$c"
  echo "== quic case $name: $K pairs, $S B, $PPS pps, ${D}s" >&2
  start_fwd
  udp_run "baseline=127.0.0.1:$FWD_PORT" "$K" "$S" "$PPS" "$OUT/$name-qbaseline.json" --relay-pid "$FPID"
  stop_fwd
  udp_row "C fwd <- duet-loadtest (QUIC case)" "$K" "$S" "$OUT/$name-qbaseline.json"
  start_relay
  udp_run "quic=127.0.0.1:$QUIC_PORT" "$K" "$S" "$PPS" "$OUT/$name-quic.json" \
    --relay-pid "$RPID" --cert "$DATA/cert.pem" --token-key-file "$DATA/token-key"
  stop_relay
  udp_row "duet-relay QUIC datagrams" "$K" "$S" "$OUT/$name-quic.json"
done

# Relay RSS per idle session: IDLE_N sessions joined (fast path: and bound), no media.
idle_rss() { # target label json
  start_relay
  udp_run "$1=127.0.0.1:$QUIC_PORT" "$IDLE_N" 160 1000 "$3" --idle \
    --relay-pid "$RPID" --cert "$DATA/cert.pem" --token-key-file "$DATA/token-key"
  stop_relay
  python3 - "$3" "$2" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1])); rel = r["relay"]
    print("relay RSS per idle %s session: %.1f KiB (RSS %.1f -> %.1f MiB, %d sessions ready, %s endpoints bound)" % (
        sys.argv[2], rel["rss_per_session_bytes"] / 1024, rel["rss_before_bytes"] / 2**20,
        rel["rss_after_bytes"] / 2**20, r["setup"]["pairs_ready"], r["setup"]["binds_confirmed"] if r["setup"]["binds_confirmed"] is not None else "no"))
except Exception as e:
    print("relay RSS per idle %s session: failed (%s)" % (sys.argv[2], e))
PY
}
IDLE_LINES="relay RSS per idle session: not measured (IDLE_N=0 or no fast path)"
if [ "$IDLE_N" -gt 0 ] && [ "$HAS_FP" = 1 ]; then
  echo "== idle sessions: $IDLE_N" >&2
  IDLE_LINES=$(idle_rss fastpath fast-path "$OUT/idle-fastpath.json"; idle_rss quic "QUIC-only" "$OUT/idle-quic.json")
fi

# The table: ratio = relay CPU µs/packet over the C fwd's with the same generator and case.
python3 - "$ROWS" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| path | pairs | size B | offered pps | relay CPU µs/packet | ratio to C (same generator) | loss % | p50 / p99 µs | generator CPU s | ready pairs |")
print("|---|---|---|---|---|---|---|---|---|---|")
ref = None
for r in rows:
    path, k, s, pps, us = r[:5]
    if path.startswith("C fwd <- duet-loadtest"):
        ref = us; ratio = "1.00"
    elif path.startswith("C fwd <- C"):
        ratio = "(calibration)"
    else:
        try: ratio = "%.2f" % (float(us) / float(ref))
        except (TypeError, ValueError, ZeroDivisionError): ratio = "n/a"
    print("| " + " | ".join([path, k, s, pps, us, ratio] + r[5:]) + " |")
PY
echo
echo "$IDLE_LINES"
echo "(raw lines: $LOG; reports: $OUT/*.json)"
