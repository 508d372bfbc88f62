#!/usr/bin/env bash
# System benchmark: the Duet relay's raw UDP fast path and QUIC datagram path against the plain
# C forwarder of ../shared/baseline and against coturn, side by side in one run on this machine,
# same offered load; then (SAT=1) a saturation ladder of each.
#
# For each case NAME:K:SIZE:PPS (K pairs, SIZE-byte UDP payloads, PPS packets/s in total):
#   1. C fwd      driven by the C loadgen                          (calibration row)
#   2. C fwd      driven by duet-loadtest udp --target baseline    (the denominator of "ratio")
#   3. duet-relay driven by duet-loadtest udp --target fastpath    (raw UDP fast path)
#   4. coturn     driven by duet-loadtest udp --target turn        (TURN ChannelData, both ends relayed)
#   5. duet-relay driven by duet-loadtest udp --target quic        (QUIC datagrams; QUIC_CASES only,
#                 which get rows 2 and 4 at the same load too)
# Every forwarder is a fresh process per row, measured by utime+stime from /proc/PID/stat; the
# ratio is relay CPU µs per forwarded packet over row 2's (same generator, same load).
# Then relay RSS per idle fast-path session: IDLE_N sessions joined and bound, no media.
#
# Saturation ladder (SAT=1): for C fwd, the fast path and coturn, SAT_PAIRS pairs at each size
# of SAT_SIZES, the offered rate climbs SAT_RATES; the three run back to back at each step (a
# fresh process each), a target leaves the ladder when a step loses more than SAT_LOSS % or its
# generator cannot offer the rate (generator_kept_up false), after one retry of that step. The
# maximum loss-free rate is the last step passed; the generator's own cores are shown beside the
# relay's so a reader sees who saturated. Bounded: the ladder stops starting steps after
# SAT_BUDGET seconds (default 1200; one step is about SAT_D + 5 s per target).
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
#        GEN_THREADS=1 GEN_ADDRESSING=ports (duet-loadtest udp --threads / --addressing for the
#                   side-by-side rows; ports = a socket per endpoint, as loadgen.c and earlier runs)
#        TURN=auto (coturn rows when `turnserver` is installed; 1 requires it, 0 skips them)
#        TURN_THREADS=1 (coturn --relay-threads: one, like fwd.c and the relay's default fast-path
#                   workers here; coturn's own default is one per CPU)
#        TURN_THREADS_ALT="" (an extra coturn row per case with these relay threads, e.g. 2)
#        SAT=0 (1: the saturation ladder)  SAT_SIZES="160 1200"  SAT_PAIRS=1000  SAT_D=$D
#        SAT_RATES="25000 50000 75000 100000 125000 150000 200000 250000 300000 400000"
#        SAT_THREADS=2 SAT_ADDRESSING=ips (generator workers and addressing in the ladder: ips = a
#                   socket per worker and an address per endpoint, so a send or receive call
#                   carries many endpoints' packets, as a forwarder's do)
#        SAT_LOSS=0.1 (%)  SAT_BUDGET=1200 (s)
#        SIDE=1 (0 skips the side-by-side cases, e.g. to run only the ladder)
#        D=5 (send seconds per row)  IDLE_N=1000 (0 skips)  OUT=target/bench-system
#        SKIP_BUILD=1 (reuse the binaries)  PROFILE=release (debug: functional check only)  BASE=../shared/baseline
# Traffic stays on 127.0.0.1; every process is bounded by `timeout`; a trap kills what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
T_START=$(date +%s)
FP_WORKERS=${FP_WORKERS:-0}; FP_WORKERS_ALT=${FP_WORKERS_ALT-2}
GEN_THREADS=${GEN_THREADS:-1}; GEN_ADDRESSING=${GEN_ADDRESSING:-ports}
TURN=${TURN:-auto}; TURN_THREADS=${TURN_THREADS:-1}; TURN_THREADS_ALT=${TURN_THREADS_ALT-}
D=${D:-5}; IDLE_N=${IDLE_N:-1000}; OUT=${OUT:-target/bench-system}; SIDE=${SIDE:-1}
SAT=${SAT:-0}; SAT_SIZES=${SAT_SIZES:-"160 1200"}; SAT_PAIRS=${SAT_PAIRS:-1000}; SAT_D=${SAT_D:-$D}
SAT_RATES=${SAT_RATES:-"25000 50000 75000 100000 125000 150000 200000 250000 300000 400000"}
SAT_THREADS=${SAT_THREADS:-2}; SAT_ADDRESSING=${SAT_ADDRESSING:-ips}; SAT_LOSS=${SAT_LOSS:-0.1}; SAT_BUDGET=${SAT_BUDGET:-1200}
CASES=${CASES-"160x1:1:160:40000 160x1000:1000:160:40000 1200x1:1:1200:30000 1200x1000:1000:1200:30000"}
QUIC_CASES=${QUIC_CASES-"160x1:1:160:10000 160x100:100:160:10000 1100x1:1:1100:10000"}
[ "$SIDE" = 1 ] || { CASES=""; QUIC_CASES=""; IDLE_N=0; }
BASE=${BASE:-../shared/baseline}
mkdir -p "$OUT/bin"; OUT=$(cd "$OUT" && pwd)
LOG="$OUT/log.txt"; : > "$LOG"
ROWS="$OUT/rows.tsv"; : > "$ROWS"
SAT_ROWS="$OUT/sat.tsv"; : > "$SAT_ROWS"

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
FWD_PORT=40300; QUIC_PORT=44400; OPS_PORT=49400; FP_PORT=45400; TURN_PORT=43478
TURN_USER=bench:bench-secret
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HAS_FP=0; "$RELAY" serve --help 2>/dev/null | grep -q -- '--fast-path-listen' && HAS_FP=1
HAS_TURN=0
case "$TURN" in
  0) ;;
  1) command -v turnserver >/dev/null || { echo "TURN=1 but turnserver is not installed (apt-get install -y coturn)" >&2; exit 1; }; HAS_TURN=1 ;;
  *) command -v turnserver >/dev/null && HAS_TURN=1 || echo "turnserver not installed: no coturn rows (apt-get install -y coturn)" >&2 ;;
esac
echo "run-system: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), load: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$LOG" >&2

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
  for _ in $(seq 100); do [ -s "$DATA/token-signing-key" ] && [ -s "$DATA/cert.pem" ] && break; sleep 0.1; done
  sleep 0.3
}
stop_relay() { kill -TERM "$RPID" 2>/dev/null || true; wait "$RPID" 2>/dev/null || true; }

# Starts a fresh coturn: loopback only, plain UDP only (no TCP/TLS/DTLS listeners, no CLI), one
# static long-term user, loopback peers allowed (both relayed addresses are on 127.0.0.1), relay
# ports 20000-29999 (below the kernel's ephemeral range, so the generator's sockets never take
# them), logs to a file only. No bandwidth or quota limit is set (coturn's defaults: none).
start_turn() { # [relay threads]
  rm -f "$OUT/turn.log" "$OUT/turn.pid"
  turnserver -n -L 127.0.0.1 -E 127.0.0.1 -p "$TURN_PORT" --no-tcp --no-tls --no-dtls --no-cli \
    --no-tcp-relay --no-rfc5780 --no-software-attribute --allow-loopback-peers --fingerprint \
    --min-port 20000 --max-port 29999 -m "${1:-$TURN_THREADS}" \
    --lt-cred-mech --realm duet-bench --user "$TURN_USER" \
    --log-file "$OUT/turn.log" --simple-log --no-stdout-log --pidfile "$OUT/turn.pid" \
    --userdb "$OUT/turndb" --no-auth-pings --no-dynamic-ip-list --no-dynamic-realms \
    > "$OUT/turn.out" 2>&1 &
  TPID=$!; PIDS+=("$TPID")
  local hex; hex=$(printf '0100007F:%04X ' "$TURN_PORT")
  for _ in $(seq 100); do grep -q "$hex" /proc/net/udp && break; sleep 0.1; done
  sleep 0.2
}
stop_turn() { kill -TERM "$TPID" 2>/dev/null || true; wait "$TPID" 2>/dev/null || true; }

# Reads a udp report and prints a row: path K size then the measured columns.
udp_row() { # path K size json
  python3 - "$@" <<'PY'
import json, sys
path, k, size, f = sys.argv[1:5]
try:
    r = json.load(open(f))
except Exception:
    print("\t".join([path, k, size, "n/a"] + ["n/a"] * 5)); sys.exit()
rel = r.get("relay") or {}
us = rel.get("cpu_us_per_packet")
lat = r["latency_us"]
print("\t".join([path, k, size, "%.0f" % r["offered_pps"], "%.3f" % us if us is not None else "n/a",
                 "%.3f" % r["loss_pct"], "%d / %d / %d" % (lat["p50"], lat["p99"], lat["p999"]),
                 "%.2f" % r["generator_cpu_s"], "%d/%d" % (r["setup"]["pairs_ready"], r["pairs"])]))
PY
}

udp_run() { # target K size pps json [extra...]
  local tgt=$1 k=$2 size=$3 pps=$4 json=$5; shift 5
  rm -f "$json"
  timeout $((D + 120)) "$LT" udp --target "$tgt" --pairs "$k" --size "$size" --pps "$pps" \
    --duration "${D}s" --report "$json" "$@" >> "$LOG" 2>&1 || echo "udp $tgt exited $?" >> "$LOG"
}

# One measured row of a raw target against a fresh forwarder: fwd | fastpath | turn.
# Prints the report's path. Extra args go to duet-loadtest (e.g. --threads).
raw_row() { # kind K size pps json variant [extra...]
  local kind=$1 k=$2 size=$3 pps=$4 json=$5 variant=$6; shift 6
  case "$kind" in
    fwd) start_fwd
         udp_run "baseline=127.0.0.1:$FWD_PORT" "$k" "$size" "$pps" "$json" --relay-pid "$FPID" "$@"
         stop_fwd ;;
    fastpath) start_relay "$variant"
         udp_run "fastpath=127.0.0.1:$QUIC_PORT" "$k" "$size" "$pps" "$json" --relay-pid "$RPID" \
           --cert "$DATA/cert.pem" --token-key-file "$DATA/token-signing-key" "$@"
         stop_relay ;;
    turn) start_turn "$variant"
         udp_run "turn=127.0.0.1:$TURN_PORT" "$k" "$size" "$pps" "$json" --relay-pid "$TPID" \
           --turn-user "$TURN_USER" "$@"
         stop_turn ;;
  esac
}
fp_label() { local w=$1; [ "$w" = 0 ] && w="default ($(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 )))"; echo "duet-relay fast path, workers=$w"; }

for c in $CASES; do
  IFS=: read -r name K S PPS <<<"$c"
  echo "== case $name: $K pairs, $S B, $PPS pps, ${D}s (load $(cut -d' ' -f1 /proc/loadavg))" >&2
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
                 g("loss_pct", "%.3f"), " / ".join(g(q, "%.0f") for q in ("p50_us", "p99_us", "p999_us")),
                 g("loadgen_cpu_s", "%.2f"), "-"]))
PY
  # 2. C fwd + duet-loadtest udp (baseline protocol).
  raw_row fwd "$K" "$S" "$PPS" "$OUT/$name-baseline.json" - --threads "$GEN_THREADS" --addressing "$GEN_ADDRESSING"
  udp_row "C fwd <- duet-loadtest" "$K" "$S" "$OUT/$name-baseline.json" >> "$ROWS"
  # 3. duet-relay fast path (FP_WORKERS, then FP_WORKERS_ALT).
  if [ "$HAS_FP" = 1 ]; then
    for w in $FP_WORKERS $FP_WORKERS_ALT; do
      raw_row fastpath "$K" "$S" "$PPS" "$OUT/$name-fastpath-w$w.json" "$w" --threads "$GEN_THREADS" --addressing "$GEN_ADDRESSING"
      udp_row "$(fp_label "$w")" "$K" "$S" "$OUT/$name-fastpath-w$w.json" >> "$ROWS"
    done
  else
    printf 'duet-relay fast path\t%s\t%s\tn/a (relay has no --fast-path-listen)\tn/a\tn/a\tn/a\tn/a\tn/a\n' "$K" "$S" >> "$ROWS"
  fi
  # 4. coturn (TURN_THREADS, then TURN_THREADS_ALT).
  if [ "$HAS_TURN" = 1 ]; then
    for th in $TURN_THREADS $TURN_THREADS_ALT; do
      raw_row turn "$K" "$S" "$PPS" "$OUT/$name-turn-m$th.json" "$th" --threads "$GEN_THREADS" --addressing "$GEN_ADDRESSING"
      udp_row "coturn, relay-threads=$th" "$K" "$S" "$OUT/$name-turn-m$th.json" >> "$ROWS"
    done
  fi
done

for c in $QUIC_CASES; do
  IFS=: read -r name K S PPS <<<"$c"
  echo "== quic case $name: $K pairs, $S B, $PPS pps, ${D}s (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  raw_row fwd "$K" "$S" "$PPS" "$OUT/$name-qbaseline.json" - --threads "$GEN_THREADS" --addressing "$GEN_ADDRESSING"
  udp_row "C fwd <- duet-loadtest (QUIC case)" "$K" "$S" "$OUT/$name-qbaseline.json" >> "$ROWS"
  start_relay
  udp_run "quic=127.0.0.1:$QUIC_PORT" "$K" "$S" "$PPS" "$OUT/$name-quic.json" \
    --relay-pid "$RPID" --cert "$DATA/cert.pem" --token-key-file "$DATA/token-signing-key"
  stop_relay
  udp_row "duet-relay QUIC datagrams" "$K" "$S" "$OUT/$name-quic.json" >> "$ROWS"
  if [ "$HAS_TURN" = 1 ]; then
    raw_row turn "$K" "$S" "$PPS" "$OUT/$name-qturn.json" "$TURN_THREADS" --threads "$GEN_THREADS" --addressing "$GEN_ADDRESSING"
    udp_row "coturn, relay-threads=$TURN_THREADS (QUIC case)" "$K" "$S" "$OUT/$name-qturn.json" >> "$ROWS"
  fi
done

# Relay RSS per idle session: IDLE_N sessions joined (fast path: and bound), no media.
idle_rss() { # target label json
  start_relay
  udp_run "$1=127.0.0.1:$QUIC_PORT" "$IDLE_N" 160 1000 "$3" --idle \
    --relay-pid "$RPID" --cert "$DATA/cert.pem" --token-key-file "$DATA/token-signing-key"
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

# One ladder step: a fresh forwarder, SAT_PAIRS pairs at RATE; appends a row to SAT_ROWS and
# prints its verdict: ok, loss, generator (could not offer the rate) or setup (pairs missing).
sat_step() { # kind label size rate json
  local kind=$1 label=$2 size=$3 rate=$4 json=$5 variant=-
  case "$kind" in fastpath) variant=$FP_WORKERS ;; turn) variant=$TURN_THREADS ;; esac
  D=$SAT_D raw_row "$kind" "$SAT_PAIRS" "$size" "$rate" "$json" "$variant" \
    --threads "$SAT_THREADS" --addressing "$SAT_ADDRESSING"
  python3 - "$label" "$size" "$rate" "$json" "$SAT_LOSS" "$(cut -d' ' -f1 /proc/loadavg)" "$SAT_ROWS" <<'PY'
import json, sys
label, size, rate, f, max_loss, load, rows = sys.argv[1:8]
try:
    r = json.load(open(f))
except Exception:
    open(rows, "a").write("\t".join([label, size, rate] + ["n/a"] * 7 + ["failed", load]) + "\n")
    print("setup"); sys.exit()
rel = r.get("relay") or {}
el = r["elapsed_s"] or 1.0
us = rel.get("cpu_us_per_packet")
lat = r["latency_us"]
if r["setup"]["pairs_ready"] < r["pairs"]:
    verdict = "setup"
elif not r["generator_kept_up"]:
    verdict = "generator"
elif r["loss_pct"] > float(max_loss):
    verdict = "loss"
else:
    verdict = "ok"
gw = r.get("generator_window_cpu_s")
open(rows, "a").write("\t".join([
    label, size, rate, "%.0f" % r["offered_pps"], "%.3f" % us if us is not None else "n/a",
    "%.3f" % r["loss_pct"], "%d / %d / %d" % (lat["p50"], lat["p99"], lat["p999"]),
    "%.2f" % (rel["cpu_s"] / el) if rel.get("cpu_s") is not None else "n/a",
    "%.2f" % (gw / el) if gw is not None else "n/a", "%d/%d" % (r["setup"]["pairs_ready"], r["pairs"]),
    verdict, load]) + "\n")
print(verdict)
PY
}

if [ "$SAT" = 1 ]; then
  SAT_T0=$(date +%s); SAT_NOTE=""
  for S in $SAT_SIZES; do
    alive="fwd"; [ "$HAS_FP" = 1 ] && alive="$alive fastpath"; [ "$HAS_TURN" = 1 ] && alive="$alive turn"
    for R in $SAT_RATES; do
      [ -n "$alive" ] || break
      if [ $(( $(date +%s) - SAT_T0 )) -ge "$SAT_BUDGET" ]; then
        SAT_NOTE="ladder stopped at the ${SAT_BUDGET}s budget before $S B x $R pps (still climbing: $alive)"; break 2
      fi
      echo "== ladder: $SAT_PAIRS pairs x $S B at $R pps: $alive (load $(cut -d' ' -f1 /proc/loadavg))" >&2
      next=""
      for t in $alive; do
        case "$t" in fwd) label="C fwd" ;; fastpath) label=$(fp_label "$FP_WORKERS") ;; turn) label="coturn, relay-threads=$TURN_THREADS" ;; esac
        v=$(sat_step "$t" "$label" "$S" "$R" "$OUT/sat-$t-$S-$R.json")
        # A failed step is retried once: on a shared box one noisy step must not end a ladder.
        [ "$v" = ok ] || v=$(sat_step "$t" "$label (retry)" "$S" "$R" "$OUT/sat-$t-$S-$R-retry.json")
        [ "$v" = ok ] && next="$next $t"
      done
      alive=$(echo $next)
    done
  done
fi

# The tables: ratio = relay CPU µs/packet over the C fwd's with the same generator and case.
if [ -s "$ROWS" ]; then
python3 - "$ROWS" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| path | pairs | size B | offered pps | relay CPU µs/packet | ratio to C (same generator) | loss % | p50 / p99 / p999 µs | generator CPU s | ready pairs |")
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
fi

# The ladder: each step's ratio is over C fwd's at the same size and rate (same generator).
if [ "$SAT" = 1 ]; then
python3 - "$SAT_ROWS" "$SAT_LOSS" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
ref = {}
for r in rows:
    if r[0].startswith("C fwd") and r[10] == "ok":
        ref[(r[1], r[2])] = r[4]
print()
print("| path | size B | target pps | offered pps | relay CPU µs/packet | ratio to C (same rate) | loss % | p50 / p99 / p999 µs | relay cores | generator cores | ready pairs | verdict | load |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
best, limit = {}, {}
for r in rows:
    label, size, rate, offered, us = r[:5]
    try: ratio = "%.2f" % (float(us) / float(ref[(size, rate)]))
    except (KeyError, ValueError, ZeroDivisionError): ratio = "n/a"
    print("| " + " | ".join([label, size, rate, offered, us, ratio] + r[5:]) + " |")
    key = (label.replace(" (retry)", ""), size)
    if r[10] == "ok":
        if int(rate) >= best.get(key, (0, ""))[0]:
            best[key] = (int(rate), "%s (offered %s)" % (rate, offered))
        limit.pop(key, None)
    else:
        limit[key] = "%s at %s pps" % (r[10], rate)
print()
print("| path | size B | max loss-free rate, pps (loss <= %s %%) | what stopped it |" % sys.argv[2])
print("|---|---|---|---|")
for key in sorted(set(best) | set(limit), key=lambda k: (int(k[1]), k[0])):
    print("| %s | %s | %s | %s |" % (key[0], key[1], best.get(key, (0, "none"))[1], limit.get(key, "top of SAT_RATES")))
PY
[ -z "${SAT_NOTE:-}" ] || echo "$SAT_NOTE"
fi
echo "(raw lines: $LOG; reports: $OUT/*.json; $(( ($(date +%s) - T_START + 59) / 60 )) min in all, load at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
