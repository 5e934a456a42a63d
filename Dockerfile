# routed-cni image: the static binary alone, nothing else (no shell, no libc, no package
# manager). Its default command is `routed-cni agent`, the DaemonSet's long-running side: it
# reads the node's podCIDR from the API server, installs the plugin and its conflist on the node
# (as `routed-cni install` does), keeps the routes between nodes and serves /healthz.
# `install` alone still works: run the image with `install --pod-subnet CIDR ...`.
#
# Two ways to build:
#  1. Where a Rust image can be pulled:     podman build -t routed-cni .
#  2. Offline, with the binary built on the host first (what CI does):
#       scripts/build-static.sh && podman build --target prebuilt -t routed-cni .

# --- 1: build inside a Rust image ---------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu

FROM scratch AS image
COPY --from=builder /src/target/x86_64-unknown-linux-gnu/release/routed-cni /routed-cni
ENTRYPOINT ["/routed-cni"]
CMD ["agent"]

# --- 2: copy a binary built on the host by scripts/build-static.sh -------------------------
FROM scratch AS prebuilt
COPY target/x86_64-unknown-linux-gnu/release/routed-cni /routed-cni
ENTRYPOINT ["/routed-cni"]
CMD ["agent"]
