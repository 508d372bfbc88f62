#!/usr/bin/env bash
# Policy store at enterprise scale (issue 13): 1,000,000 users and 10,000 groups on the
# embedded SQLite store, beside the old file store at 100,000 users, in one run.
# Figures: token mint p99 in-process and through POST /v1/tokens, user-switch changes/s,
# batch assignment of 100,000 users, sync of a 100,000-member group.
# Bounded: fixed counts (override with SCALE_USERS, SCALE_GROUPS, FILE_USERS, SCALE_MINTS,
# SCALE_SWITCHES, SCALE_BATCH). Uses a temp dir on the same disk as the target dir.
set -euo pipefail
cd "$(dirname "$0")/.."
# Thin LTO and parallel codegen: the bench profile's fat LTO takes minutes to link on 2
# cores and changes nothing measurable for a store bound by SQLite and fsync.
export CARGO_PROFILE_BENCH_LTO=thin CARGO_PROFILE_BENCH_CODEGEN_UNITS=16
export TMPDIR="${TMPDIR:-$PWD/target/tmp}"
mkdir -p "$TMPDIR"
exec cargo bench -p duet-policy --bench scale --features postgres,admin-api -- "$@"
