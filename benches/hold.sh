#!/usr/bin/env bash
# Session-hold bench: one relay on loopback, `duet-loadtest run --profile idle` starting CALLS
# E2EE calls (two real SDK endpoints each, the hybrid key agreement, SFrame) at RATE calls/s
# and holding them for HOLD, and a sampler that reads, every 2 s, the relay's sessions
# (`duet_sessions`), RSS, descriptors and CPU. Prints the peak, how long it was held, RSS per
# session at the peak and the relay's CPU per held session per second (keep-alives and the
# sparse idle frames only: taken over the samples at >= 99 % of the peak). The relay is
# named to the generator by its node id (`local=ADDR`), so every call runs as a fleet client's
# does: with the SDK's dead-relay detection on (`ConnectOptions::nodes`).
#
#   CALLS=5000 RATE=100 HOLD=30s benches/hold.sh [extra duet-relay serve flags...]
#
# Env: RELAY, LOADTEST (binaries, default target/release), OUT (output directory, default a
# temp dir), CALLS, RATE, HOLD, IDLE_INTERVAL (one frame per endpoint this often, default
# 10s), KEEP_ALIVE (SDK QUIC keep-alive, default 10s), DEAD_SILENCE (SDK dead-relay floor;
# unset: the SDK's default), GEN_ARGS (more duet-loadtest flags). The relay's session idle timeout is raised to 300 s so a slow ramp
# does not lose the first calls. Run it under `flock /work/notes/bench.lock`.
set -euo pipefail
cd "$(dirname "$0")/.."
RELAY=${RELAY:-target/release/duet-relay}
LOADTEST=${LOADTEST:-target/release/duet-loadtest}
OUT=${OUT:-$(mktemp -d)}
CALLS=${CALLS:-5000}
RATE=${RATE:-100}
HOLD=${HOLD:-30s}
IDLE_INTERVAL=${IDLE_INTERVAL:-10s}
KEEP_ALIVE=${KEEP_ALIVE:-10s}
read -r -a GEN_EXTRA <<<"${GEN_ARGS:-}"
[ -n "${DEAD_SILENCE:-}" ] && GEN_EXTRA+=(--dead-silence "$DEAD_SILENCE")
mkdir -p "$OUT"
PIDS=()
cleanup() { stop_relay; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# shellcheck source=lib/relay.sh
source benches/lib/relay.sh
start_relay 3600 --max-sessions 100000 --max-handshakes-per-source 4096 \
  --idle-timeout-ms 300000 "$@"

sample() {
  local t cpu rss fds sessions
  while :; do
    t=$(date +%s.%N)
    cpu=$(awk '{print $14 + $15}' "/proc/$RPID/stat" 2>/dev/null) || break
    rss=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$RPID/status")
    fds=$(find "/proc/$RPID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    sessions=$(curl -s --max-time 1 "http://$OPS/metrics" | awk '$1 == "duet_sessions" {print $2}')
    echo "$t $cpu $rss $fds ${sessions:-0}"
    sleep 2
  done
}
sample >"$OUT/samples.tsv" &
PIDS+=($!)
echo "load before: $(cat /proc/loadavg)" | tee "$OUT/load.txt"
"$LOADTEST" --relay "local=$QUIC" --cert "$DATA/cert.pem" --token-key-file "$DATA/token-signing-key" \
  --relay-pid "$RPID" --relay-metrics "$OPS" --calls "$CALLS" --profile idle --ramp "$RATE/s" \
  --duration "$HOLD" --idle-interval "$IDLE_INTERVAL" --keep-alive "$KEEP_ALIVE" \
  --report "$OUT/report.json" "${GEN_EXTRA[@]}" \
  >"$OUT/loadtest.out" 2>"$OUT/loadtest.err" &
GPID=$!
PIDS+=("$GPID")
# The generator's own CPU, read just before it exits (it is our child: /proc stays readable
# until it is reaped).
GEN_CPU=0
while kill -0 "$GPID" 2>/dev/null; do
  c=$(awk '{print $14 + $15}' "/proc/$GPID/stat" 2>/dev/null) || break
  GEN_CPU=$c
  sleep 1
done
wait "$GPID" || echo "duet-loadtest exited $?" | tee -a "$OUT/load.txt"
echo "load after: $(cat /proc/loadavg)" | tee -a "$OUT/load.txt"
cleanup
trap - EXIT
awk -v hz="$(getconf CLK_TCK)" -v gen="$GEN_CPU" '
  { t[NR]=$1; c[NR]=$2; r[NR]=$3; f[NR]=$4; s[NR]=$5; n=NR; if ($5 > peak) { peak=$5; p=NR } }
  END {
    if (peak == 0) { print "no session came up"; exit 1 }
    a=0; b=0
    for (i=1;i<=n;i++) if (s[i] >= 0.99*peak) { if (a==0) a=i; b=i }
    held=t[b]-t[a]
    cpu=(b>a)? (c[b]-c[a])/hz/held : 0
    printf "sessions peak %d; >= 99%% of it for %.0f s (%d samples)\n", peak, held, b-a+1
    printf "relay RSS %.1f -> %.1f MiB at the peak: %.1f KiB per session\n", r[1]/1024, r[p]/1024, (r[p]-r[1])/peak
    printf "relay descriptors %d before, %d at the peak\n", f[1], f[p]
    printf "relay CPU while held: %.3f cores = %.1f us per held session per second\n", cpu, cpu*1e6/peak
    printf "generator CPU %.1f s\n", gen/hz
  }' "$OUT/samples.tsv" | tee "$OUT/summary.txt"
jq -c '{calls: .calls, join: (.join | {count, p50_ms, p99_ms, max_ms}), lag: .generator.send_lag.p99_ms}' \
  "$OUT/report.json" 2>/dev/null | head -c 1500 || true
echo
echo "out: $OUT"
