#!/usr/bin/env bash
# Builds a fully static routed-cni (static-pie, glibc linked in) for images and for nodes
# whose libc we do not know. No musl toolchain is needed: Debian's libc6-dev ships libc.a, and
# the plugin never uses NSS (no name lookups), the one part of glibc that needs shared objects.
# --target is explicit so that RUSTFLAGS reach only the binary, not build-time proc macros.
# Then assembles target/image-root (scripts/image-root.sh: the host's nft and the libraries it
# loads), which the Dockerfile's `prebuilt` stage copies next to the binary: the agent runs nft
# to enforce NetworkPolicy. Set NO_IMAGE_ROOT=1 to build only the binary (no nft needed).
# Prints the path of the binary on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$target" >&2
bin=target/$target/release/routed-cni
if ! command -v file >/dev/null; then
    echo "build-static.sh: 'file' is not installed (apt-get install file); not verifying linkage" >&2
elif ! file "$bin" | grep -q 'static'; then
    echo "build-static.sh: $bin is not statically linked: $(file "$bin")" >&2
    exit 1
fi
if [ "${NO_IMAGE_ROOT:-}" != 1 ]; then
    bash scripts/image-root.sh target/image-root >&2
fi
echo "$bin"
