# Sourced by the bench scripts that run one relay process on loopback (floods.sh, soak.sh):
# starts it and reads where it listens, so each script states only its load.
#
#   start_relay SECS [ARGS...]   runs `$RELAY serve ARGS` on ephemeral ports under `timeout SECS`, with its
#                      data directory in $DATA (created) and its output in $OUT/relay.{out,err};
#                      appends `timeout`'s pid to PIDS (the caller's cleanup trap kills it) and
#                      sets RPID (the relay itself, not `timeout`), QUIC, FP (fast path) and OPS
#                      (host:port of /metrics), or exits 1 with the relay's stderr.
#   stop_relay         kills the relay (SIGKILL) and waits until it is gone. Call it from the
#                      cleanup: SIGTERM to `timeout` makes the relay drain for up to its drain
#                      deadline (30 s) with the load's sessions still open, so a run started
#                      right after would share the cores with it.
start_relay() {
  DATA=$(mktemp -d)
  local secs=$1
  shift
  timeout "$secs" "$RELAY" serve --data-dir "$DATA" --listen 127.0.0.1:0 \
    --ops-listen 127.0.0.1:0 "$@" >"$OUT/relay.out" 2>"$OUT/relay.err" &
  local tpid=$!
  PIDS+=("$tpid")
  for _ in $(seq 1 100); do
    grep -q "ops http" "$OUT/relay.out" 2>/dev/null && break
    sleep 0.2
  done
  RPID=$(pgrep -P "$tpid" -n)
  QUIC=$(awk '$1 == "quic" {print $2; exit}' "$OUT/relay.out")
  FP=$(awk '$1 == "fast" && $2 == "path" {print $3; exit}' "$OUT/relay.out")
  OPS=$(awk '$1 == "ops" && $2 == "http" {print $3; exit}' "$OUT/relay.out" | sed 's#http://##; s#/metrics##')
  [[ -n "$RPID" && -n "$QUIC" && -n "$FP" && -n "$OPS" ]] || {
    echo "relay did not start"
    cat "$OUT/relay.err"
    exit 1
  }
}

stop_relay() {
  [[ -n "${RPID:-}" ]] || return 0
  kill -KILL "$RPID" 2>/dev/null || true
  while kill -0 "$RPID" 2>/dev/null; do sleep 0.1; done
}
