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
#        QUIC_RUNTIME_WORKERS=0 (one QUIC row per value: the relay's --runtime-workers, the threads
#                   of the runtime carrying QUIC; 0 = the relay's default; e.g. "0 1 2")
#        FP_WORKERS=0 (fast-path worker threads of the measured relay; 0 = the relay's default,
#                   half the CPUs, at least one: 1 on a 2-core box, like fwd.c's one thread)
#        FP_WORKERS_ALT=2 (an extra fast-path row per case with these workers, e.g. one per
#                   CPU; empty skips it)
#        FP_COALESCE="" (--fast-path-coalesce-us of every fast-path row; empty = the relay's default)
#        FP_COALESCE_ALT="" (extra fast-path rows per worker count above with these coalescing
#                   windows, µs, e.g. "0 200": the fast path with and without the batching)
#        FP_BUSY_POLL_ALT="" (extra rows, FP_WORKERS workers, with these busy-poll budgets, µs)
#        FP_VARIANTS="" (replaces the three above and FP_WORKERS_ALT: fast-path rows as
#                   W[:C[:B[:A]]] = workers, coalescing window µs, busy poll µs, adaptive
#                   workers true/false; empty fields = the relay's defaults; e.g.
#                   "0 1:0 1:200 2:0::false 2:200::false")
#        PERF_SYSCALLS=0 (1: `perf stat` counts recvmmsg/sendmmsg calls and context switches of
#                   fwd and of the fast-path worker threads in each raw row, printed as a table
#                   of datagrams per call; needs perf and tracepoints)
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
#        SAT_FP_VARIANT="" (the fast-path variant W[:C[:B]] climbing the ladder; default
#                   FP_WORKERS with FP_COALESCE)
#        SIDE=1 (0 skips the side-by-side cases, e.g. to run only the ladder)
#        D=5 (send seconds per row)  IDLE_N=1000 (0 skips)  OUT=target/bench-system
#        SKIP_BUILD=1 (reuse the binaries)  PROFILE=release (debug: functional check only)  BASE=../shared/baseline
# Traffic stays on 127.0.0.1; every process is bounded by `timeout`; a trap kills what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
T_START=$(date +%s)
FP_WORKERS=${FP_WORKERS:-0}; FP_WORKERS_ALT=${FP_WORKERS_ALT-2}
FP_COALESCE=${FP_COALESCE-}; FP_COALESCE_ALT=${FP_COALESCE_ALT-}; FP_BUSY_POLL_ALT=${FP_BUSY_POLL_ALT-}
if [ -z "${FP_VARIANTS:-}" ]; then
  FP_VARIANTS=""
  for w in $FP_WORKERS $FP_WORKERS_ALT; do
    FP_VARIANTS="$FP_VARIANTS $w:$FP_COALESCE"
    for c in $FP_COALESCE_ALT; do FP_VARIANTS="$FP_VARIANTS $w:$c"; done
  done
  for b in $FP_BUSY_POLL_ALT; do FP_VARIANTS="$FP_VARIANTS $FP_WORKERS:$FP_COALESCE:$b"; done
fi
PERF_SYSCALLS=${PERF_SYSCALLS:-0}
GEN_THREADS=${GEN_THREADS:-1}; GEN_ADDRESSING=${GEN_ADDRESSING:-ports}
TURN=${TURN:-auto}; TURN_THREADS=${TURN_THREADS:-1}; TURN_THREADS_ALT=${TURN_THREADS_ALT-}
D=${D:-5}; IDLE_N=${IDLE_N:-1000}; OUT=${OUT:-target/bench-system}; SIDE=${SIDE:-1}
SAT=${SAT:-0}; SAT_SIZES=${SAT_SIZES:-"160 1200"}; SAT_PAIRS=${SAT_PAIRS:-1000}; SAT_D=${SAT_D:-$D}
SAT_RATES=${SAT_RATES:-"25000 50000 75000 100000 125000 150000 200000 250000 300000 400000"}
SAT_THREADS=${SAT_THREADS:-2}; SAT_ADDRESSING=${SAT_ADDRESSING:-ips}; SAT_LOSS=${SAT_LOSS:-0.1}; SAT_BUDGET=${SAT_BUDGET:-1200}
CASES=${CASES-"160x1:1:160:40000 160x1000:1000:160:40000 1200x1:1:1200:30000 1200x1000:1000:1200:30000"}
QUIC_CASES=${QUIC_CASES-"160x1:1:160:10000 160x100:100:160:10000 1100x1:1:1100:10000"}
QUIC_RUNTIME_WORKERS=${QUIC_RUNTIME_WORKERS:-0}
[ "$SIDE" = 1 ] || { CASES=""; QUIC_CASES=""; IDLE_N=0; }
BASE=${BASE:-../shared/baseline}
mkdir -p "$OUT/bin"; OUT=$(cd "$OUT" && pwd)
LOG="$OUT/log.txt"; : > "$LOG"
ROWS="$OUT/rows.tsv"; : > "$ROWS"
SAT_ROWS="$OUT/sat.tsv"; : > "$SAT_ROWS"
SYS_ROWS="$OUT/syscalls.tsv"; : > "$SYS_ROWS"

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
HAS_COALESCE=0; "$RELAY" serve --help 2>/dev/null | grep -q -- '--fast-path-coalesce-us' && HAS_COALESCE=1
HAS_ADAPTIVE=0; "$RELAY" serve --help 2>/dev/null | grep -q -- '--fast-path-adaptive-workers' && HAS_ADAPTIVE=1
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
# far above the offered load so the relay's rate limiter never drops what fwd.c would forward,
# and the handshake admission limits above the generator's burst of joins from one address
# (with the defaults, 64 in flight per source, 10-20 % of 1,000 pairs were refused).
start_relay() { # [fast-path variant W[:C[:B[:A]]]: workers, coalescing window µs, busy poll µs, adaptive] [runtime workers]
  DATA="$OUT/relay-data"; rm -rf "$DATA"
  local w c b a fp=()
  IFS=: read -r w c b a <<<"${1:-$FP_WORKERS:$FP_COALESCE}"
  if [ "$HAS_FP" = 1 ]; then
    fp=(--fast-path-listen "127.0.0.1:$FP_PORT" --fast-path-workers "${w:-$FP_WORKERS}")
    if [ -n "$c$b" ] && [ "$HAS_COALESCE" = 0 ]; then
      echo "this relay has no --fast-path-coalesce-us: variant $1 runs with its defaults" >&2
    else
      if [ -n "$c" ]; then fp+=(--fast-path-coalesce-us "$c"); fi
      if [ -n "$b" ]; then fp+=(--fast-path-busy-poll-us "$b"); fi
    fi
    if [ -n "$a" ] && [ "$HAS_ADAPTIVE" = 1 ]; then fp+=(--fast-path-adaptive-workers "$a"); fi
  fi
  if [ "${2:-0}" != 0 ]; then fp+=(--runtime-workers "$2"); fi
  "$RELAY" serve --data-dir "$DATA" --listen "127.0.0.1:$QUIC_PORT" --ops-listen "127.0.0.1:$OPS_PORT" \
    "${fp[@]}" --media-packets-per-sec 10000000 --media-bytes-per-sec 100000000000 \
    --max-handshakes 4096 --max-handshakes-per-source 4096 \
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

# PERF_SYSCALLS=1: counts one process's (or its fast-path worker threads') recvmmsg and
# sendmmsg calls and context switches while a row runs.
perf_start() { # pid label json
  PERF_PID=""
  [ "$PERF_SYSCALLS" = 1 ] || return 0
  local tids
  tids=$(grep -l '^duet-fastpath' /proc/"$1"/task/*/comm 2>/dev/null | awk -F/ '{print $5}' | paste -sd, - || true)
  [ -n "$tids" ] || tids=$1
  PERF_OUT="$OUT/perf-$(basename "$3" .json).txt"; PERF_LABEL=$2; PERF_JSON=$3
  perf stat -x, -e syscalls:sys_enter_recvmmsg,syscalls:sys_enter_sendmmsg,context-switches \
    -t "$tids" -o "$PERF_OUT" > /dev/null 2>&1 &
  PERF_PID=$!; PIDS+=("$PERF_PID")
}
perf_stop() {
  [ -n "${PERF_PID:-}" ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true
  python3 - "$PERF_OUT" "$PERF_LABEL" "$PERF_JSON" >> "$SYS_ROWS" <<'PY'
import json, sys
out, label, f = sys.argv[1:4]
c = {}
try:
    for l in open(out):
        p = l.strip().split(",")
        if len(p) > 2 and p[0].isdigit():
            c[p[2].split(":")[-1]] = int(p[0])
    r = json.load(open(f)); pk = r["received"]
    rx, tx, cs = c["sys_enter_recvmmsg"], c["sys_enter_sendmmsg"], c["context-switches"]
    print("\t".join([label, str(r["pairs"]), str(r["size_bytes"]), "%.0f" % r["offered_pps"], str(pk), str(rx), str(tx), str(cs),
                     "%.1f" % (pk / rx if rx else 0), "%.1f" % (pk / tx if tx else 0), "%.1f" % (pk / cs if cs else 0)]))
except Exception as e:
    print("\t".join([label, "perf failed: %s" % e] + [""] * 9))
PY
  PERF_PID=""
}

# One measured row of a raw target against a fresh forwarder: fwd | fastpath | turn.
# Prints the report's path. Extra args go to duet-loadtest (e.g. --threads).
raw_row() { # kind K size pps json variant [extra...]
  local kind=$1 k=$2 size=$3 pps=$4 json=$5 variant=$6; shift 6
  case "$kind" in
    fwd) start_fwd; perf_start "$FPID" "C fwd" "$json"
         udp_run "baseline=127.0.0.1:$FWD_PORT" "$k" "$size" "$pps" "$json" --relay-pid "$FPID" "$@"
         perf_stop; stop_fwd ;;
    fastpath) start_relay "$variant"; perf_start "$RPID" "$(fp_label "$variant")" "$json"
         udp_run "fastpath=127.0.0.1:$QUIC_PORT" "$k" "$size" "$pps" "$json" --relay-pid "$RPID" \
           --cert "$DATA/cert.pem" --token-key-file "$DATA/token-signing-key" "$@"
         perf_stop; stop_relay ;;
    turn) start_turn "$variant"
         udp_run "turn=127.0.0.1:$TURN_PORT" "$k" "$size" "$pps" "$json" --relay-pid "$TPID" \
           --turn-user "$TURN_USER" "$@"
         stop_turn ;;
  esac
}
fp_label() { # W[:C[:B[:A]]]
  local w c b a l; IFS=: read -r w c b a <<<"$1"
  if [ "${w:-0}" = 0 ]; then
    if [ "$HAS_ADAPTIVE" = 1 ] && [ "$a" != false ]; then w="default ($(nproc), adaptive)"
    else w="default ($(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 )))"; fi
  elif [ "$HAS_ADAPTIVE" = 1 ] && [ "$w" != 1 ]; then
    [ "$a" = false ] && w="$w fixed" || w="$w adaptive"
  fi
  l="duet-relay fast path, workers=$w"
  [ -n "$c" ] && l="$l, coalesce=${c}µs"
  [ -n "$b" ] && l="$l, busy-poll=${b}µs"
  echo "$l"
}

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
  # 3. duet-relay fast path (FP_VARIANTS: FP_WORKERS, FP_WORKERS_ALT, coalescing windows).
  if [ "$HAS_FP" = 1 ]; then
    for v in $FP_VARIANTS; do
      j="$OUT/$name-fastpath-w${v//:/-}.json"
      raw_row fastpath "$K" "$S" "$PPS" "$j" "$v" --threads "$GEN_THREADS" --addressing "$GEN_ADDRESSING"
      udp_row "$(fp_label "$v")" "$K" "$S" "$j" >> "$ROWS"
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
  for rw in $QUIC_RUNTIME_WORKERS; do
    label="duet-relay QUIC datagrams"; [ "$rw" = 0 ] || label="$label, runtime-workers=$rw"
    start_relay "" "$rw"
    udp_run "quic=127.0.0.1:$QUIC_PORT" "$K" "$S" "$PPS" "$OUT/$name-quic-rw$rw.json" \
      --relay-pid "$RPID" --cert "$DATA/cert.pem" --token-key-file "$DATA/token-signing-key"
    stop_relay
    udp_row "$label" "$K" "$S" "$OUT/$name-quic-rw$rw.json" >> "$ROWS"
  done
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
  case "$kind" in fastpath) variant=${SAT_FP_VARIANT:-$FP_WORKERS:$FP_COALESCE} ;; turn) variant=$TURN_THREADS ;; esac
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
        case "$t" in fwd) label="C fwd" ;; fastpath) label=$(fp_label "${SAT_FP_VARIANT:-$FP_WORKERS:$FP_COALESCE}") ;; turn) label="coturn, relay-threads=$TURN_THREADS" ;; esac
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

if [ -s "$SYS_ROWS" ]; then
echo
echo "| path | pairs | size B | offered pps | packets back | recvmmsg | sendmmsg | context switches | packets per recvmmsg | per sendmmsg | per switch |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
while IFS= read -r l; do echo "| ${l//$'\t'/ | } |"; done < "$SYS_ROWS"
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
