#!/usr/bin/env bash
# The whole routed-cni test suite, in order, failing fast:
#   packages, cargo fmt --check, Kubernetes manifests, shellcheck e2e/kind, clippy,
#   release build, cargo test (unit + node integration tests), every executable e2e/*.sh,
#   then scripts/demo.sh.
# Needs root (the node tests and the demo create network namespaces).
set -euo pipefail

cd "$(dirname "$0")/.."

PASSED=0
FAILED=0
summary() { echo "test.sh: $PASSED passed, $FAILED failed"; }

stage() { # stage NAME COMMAND...
    local name=$1; shift
    local start=$SECONDS
    printf '\n===== %s =====\n' "$name"
    if "$@"; then
        PASSED=$((PASSED + 1))
        echo "----- ok: $name ($((SECONDS - start))s)"
    else
        FAILED=$((FAILED + 1))
        echo "----- FAILED: $name ($((SECONDS - start))s)"
        summary
        exit 1
    fi
}

packages() {
    local need=() pkg
    for pkg in iproute2 iptables iputils-ping socat jq python3 openssl containernetworking-plugins python3-venv python3-prometheus-client shellcheck ufw nftables firewalld; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
    done
    # ufw: e2e/46-firewalls.sh runs it inside a node namespace only; installed, it stays
    # disabled (ENABLED=no). It Breaks netfilter-persistent, which apt would remove: not here.
    if [[ " ${need[*]} " == *" ufw "* ]] && dpkg-query -W -f='${Status}' netfilter-persistent 2>/dev/null | grep -q "ok installed"; then
        echo "not installing ufw: it would remove netfilter-persistent (e2e/46-firewalls.sh will say so)"
        local keep=()
        for pkg in "${need[@]}"; do [ "$pkg" = ufw ] || keep+=("$pkg"); done
        need=("${keep[@]}")
    fi
    # firewalld: e2e/47-firewalld.sh runs it inside a node namespace only, on a private D-Bus.
    # Debian's package enables and starts it: masked first (what `systemctl mask` writes, which
    # the package's scripts respect), so it never runs on this machine.
    if [[ " ${need[*]} " == *" firewalld "* ]]; then
        mkdir -p /etc/systemd/system && ln -sf /dev/null /etc/systemd/system/firewalld.service
    fi
    if [ ${#need[@]} -eq 0 ]; then
        echo "all Debian packages present"
        return 0
    fi
    echo "installing: ${need[*]}"
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

if [ "$(id -u)" != 0 ]; then
    echo "test.sh: must run as root (the tests create network namespaces)" >&2
    exit 1
fi
command -v cargo >/dev/null || {
    echo "test.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
}

# Every stage tests the binary this script builds (e2e/lib/world.sh reads ROUTED_CNI_BIN).
ROUTED_CNI_BIN=$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/routed-cni
export ROUTED_CNI_BIN

stage "debian packages" packages
stage "cargo fmt --check" cargo fmt --check
# Kubernetes manifests: strict schema + our own policy checks, offline (scripts/validate-manifests.sh).
stage "manifests" bash scripts/validate-manifests.sh
# The kind e2e needs Docker and is not run here; lint it so it does not rot.
stage "shellcheck e2e/kind" shellcheck e2e/kind/*.sh
stage "cargo clippy" cargo clippy --all-targets -- -D warnings
stage "cargo build --release" cargo build --release
# Each node test builds its own namespaces, so they can run in parallel.
# Root-only tests are #[ignore]d so a non-root `cargo test` reports them as ignored; run them.
stage "cargo test --release" cargo test --release -- --include-ignored
# The stand-in API server the agent e2e scripts run against: its own checks first, so an e2e
# failure is never the stand-in's.
stage "stand-in API server self-test" python3 e2e/lib/fake-apiserver-test.py
shopt -s nullglob
for script in e2e/*.sh; do
    if [ -x "$script" ]; then
        stage "$script" "./$script"
    else
        echo "test.sh: warning: $script is not executable; running it with bash"
        stage "$script" bash "$script"
    fi
done
stage "scripts/demo.sh" ./scripts/demo.sh
summary
