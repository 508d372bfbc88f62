#!/usr/bin/env bash
# Fuzz smoke: every cargo-fuzz target of fuzz/ runs for FUZZ_SECONDS (default 30) from its
# committed seed corpus (fuzz/seeds/<target>/, read-only; new inputs go to a scratch
# corpus), and CI fails if any target crashes, leaks past the RSS limit or times out on one
# input. A crash leaves its input in fuzz/artifacts/<target>/ and the command to replay it
# is printed. Called by .ci/run; runs alone too: `bash .ci/fuzz-smoke.sh [target...]`.
#
# Needs the nightly toolchain (cargo-fuzz builds with -Zsanitizer): present on this
# project's machines; it cannot be fetched here (rustup's server is not reachable), so its
# absence is a hard failure with that reason. cargo-fuzz itself comes from crates.io.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${FUZZ_SECONDS:-30}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "FAIL: the nightly toolchain is missing (cargo-fuzz needs it; rustup cannot fetch it here)" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== fuzz: installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked --quiet
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  # The targets are fuzz_targets/*.rs (the crate's other binaries, like write_seeds, are not).
  mapfile -t targets < <(cargo +nightly fuzz list | while read -r t; do
    [ -f "fuzz_targets/$t.rs" ] && echo "$t"; done)
fi
missing=()
for t in "${targets[@]}"; do
  [ -d "seeds/$t" ] && [ -n "$(ls -A "seeds/$t")" ] || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "FAIL: no committed seeds for: ${missing[*]} (fuzz/seeds/<target>/; see fuzz/src/write_seeds.rs)" >&2
  exit 1
fi

# The config target's seed is the example config (fuzz/src/write_seeds.rs copies it): a
# stale copy would stop covering the keys added since.
if ! cmp -s seeds/config/example ../relay/duet-relay.example.toml; then
  echo "FAIL: fuzz/seeds/config/example differs from relay/duet-relay.example.toml (cp it, or run write_seeds)" >&2
  exit 1
fi

echo "== fuzz: building ${#targets[@]} targets (release, address sanitizer)"
T0=$SECONDS
if ! cargo +nightly fuzz build --release > "${TMPDIR:-/tmp}/duet-fuzz-build.log" 2>&1; then
  tail -60 "${TMPDIR:-/tmp}/duet-fuzz-build.log"
  echo "FAIL: the fuzz targets do not build" >&2
  exit 1
fi
echo "   (build: $((SECONDS - T0)) s)"

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$SCRATCH/$t"
  # -timeout: one input may not take a second; -rss_limit_mb: no unbounded buffering.
  if cargo +nightly fuzz run --release "$t" "$SCRATCH/$t" "seeds/$t" -- \
      -max_total_time="$SECS" -timeout=1 -rss_limit_mb=2048 -print_final_stats=1 \
      > "$SCRATCH/$t.log" 2>&1; then
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$SCRATCH/$t.log" | grep -Eo '[0-9]+$' || echo "?")
    cov=$(grep -Eo 'cov: [0-9]+' "$SCRATCH/$t.log" | tail -1 || true)
    echo "ok   $t: ${SECS}s, $runs inputs, $cov"
  else
    failed+=("$t")
    echo "FAIL $t:"
    tail -40 "$SCRATCH/$t.log"
    echo "     replay: (cd fuzz && cargo +nightly fuzz run $t artifacts/$t/<crash file>)"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAIL: fuzz targets crashed: ${failed[*]}" >&2
  exit 1
fi
echo "== fuzz: ${#targets[@]} targets clean ($((SECONDS - T0)) s)"
