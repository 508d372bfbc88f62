#!/bin/sh
# Handshake-flood figures for benches/RESULTS.md ("Handshake floods"): a relay process (the
# debug binary; its dependencies, quinn and aws-lc, are built optimised) under a flood of
# QUIC Initials from a socket that never answers, while a call runs. Loopback only.
#   FLOOD_ATTEMPTS=10000 FLOOD_PER_SEC=10000 benches/handshake-flood.sh
set -eu
cd "$(dirname "$0")/.."
cargo build -q -p duet-relay --bin duet-relay
cargo test -q -p duet-relay --test flood_bench -- --ignored --nocapture --test-threads=1
