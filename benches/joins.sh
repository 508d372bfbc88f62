#!/usr/bin/env bash
# Join-rate bench: one relay on loopback, `duet-loadtest run` starting CALLS idle calls at
# RATE calls/s (two joins each), and a sampler that reads, every 0.2 s, the relay's CPU
# (/proc/PID/stat), its joins (`duet_joins_total`) and the box's UDP counters
# (/proc/net/snmp: on loopback every datagram the relay sends or receives is received once,
# by it or by the generator, so InDatagrams counts both directions of the relay's traffic).
# The relay's CPU and datagrams per join are taken over the joining window only (first to
# last sample in which the join count moved), so the held calls' keepalives are left out;
# their cost is printed beside, per second.
#
#   RATE=200 CALLS=1200 benches/joins.sh [extra duet-relay serve flags...]
#
# Env: RELAY, LOADTEST (binaries, default target/release), OUT (output directory, default a
# temp dir), RATE, CALLS, HOLD (duration of the hold, default 3s), PERF=1 (perf record the
# relay at 999 Hz, to $OUT/perf.data), STAT=1 (perf stat the relay's send/recv syscalls).
# Run it under `flock /work/notes/bench.lock`.
set -euo pipefail
cd "$(dirname "$0")/.."
RELAY=${RELAY:-target/release/duet-relay}
LOADTEST=${LOADTEST:-target/release/duet-loadtest}
OUT=${OUT:-$(mktemp -d)}
RATE=${RATE:-200}
CALLS=${CALLS:-1200}
HOLD=${HOLD:-3s}
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# shellcheck source=lib/relay.sh
source benches/lib/relay.sh
start_relay 300 --max-sessions 20000 --max-handshakes-per-source 4096 "$@"

sample() {
  local t cpu joins udp
  while :; do
    t=$(date +%s.%N)
    cpu=$(awk '{print $14 + $15}' "/proc/$RPID/stat" 2>/dev/null) || break
    joins=$(curl -s "http://$OPS/metrics" | awk '$1 == "duet_joins_total" {print $2}')
    udp=$(awk '$1 == "Udp:" && $2 ~ /^[0-9]/ {print $2; exit}' /proc/net/snmp)
    echo "$t $cpu ${joins:-0} $udp"
    sleep 0.2
  done
}
sample >"$OUT/samples.tsv" &
PIDS+=($!)
if [[ "${PERF:-0}" == 1 ]]; then
  perf record -F 999 -g -p "$RPID" -o "$OUT/perf.data" 2>"$OUT/perf.err" &
  PIDS+=($!)
fi
if [[ "${STAT:-0}" == 1 ]]; then
  perf stat -e 'syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendmmsg,syscalls:sys_enter_recvmsg,syscalls:sys_enter_recvmmsg,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,context-switches' \
    -p "$RPID" -o "$OUT/stat.txt" &
  SPID=$!
  PIDS+=("$SPID")
fi
echo "load before: $(cat /proc/loadavg)" | tee "$OUT/load.txt"
"$LOADTEST" --relay "$QUIC" --cert "$DATA/cert.pem" --token-key-file "$DATA/token-signing-key" \
  --relay-pid "$RPID" --relay-metrics "$OPS" --calls "$CALLS" --profile idle --ramp "$RATE/s" \
  --duration "$HOLD" --report "$OUT/report.json" >"$OUT/loadtest.out" 2>"$OUT/loadtest.err" || true
echo "load after: $(cat /proc/loadavg)" | tee -a "$OUT/load.txt"
sleep 0.5
if [[ "${STAT:-0}" == 1 ]]; then kill -INT "$SPID"; sleep 0.5; fi
if [[ "${PERF:-0}" == 1 ]]; then kill -INT "${PIDS[2]}"; sleep 2; fi
cleanup
trap - EXIT
# Joining window: from the last sample before the first join to the first sample at the
# final count.
awk -v hz="$(getconf CLK_TCK)" '
  { t[NR]=$1; c[NR]=$2; j[NR]=$3; u[NR]=$4; n=NR }
  END {
    final=j[n]; a=0; b=0
    for (i=1;i<=n;i++) { if (a==0 && j[i] > 0) a=(i>1?i-1:1); if (b==0 && j[i]==final) b=i }
    cpu=(c[b]-c[a])/hz; joins=j[b]-j[a]; secs=t[b]-t[a]
    udp=u[b]-u[a]
    # hold: the samples after the window (keepalives of the held calls) up to 2 s later
    e=b; for (i=b;i<=n;i++) if (t[i]-t[b] <= 2.0) e=i
    hold=(e>b)? (c[e]-c[b])/hz/(t[e]-t[b]) : 0
    printf "joins %d in %.2f s (%.0f/s); relay CPU %.3f s = %.0f us/join; UDP datagrams in (box, = relay in + out) %d = %.1f/join; hold after: %.3f CPU s/s\n", joins, secs, joins/secs, cpu, cpu*1e6/joins, udp, udp/joins, hold
  }' "$OUT/samples.tsv" | tee "$OUT/summary.txt"
jq -c '{join: (.join | {count, p50_ms, p99_ms, max_ms}), calls: .calls, relays: [.relays[] | {cpu_seconds}], lag: .generator.send_lag.p99_ms}' "$OUT/report.json" 2>/dev/null | head -c 1500 || true
echo
[[ -f "$OUT/stat.txt" ]] && cat "$OUT/stat.txt"
echo "out: $OUT"
