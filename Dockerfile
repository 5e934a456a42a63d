# routed-cni image: the static binary, plus the `nft` program with exactly the shared objects
# it loads (scripts/image-root.sh: nft, 11 libraries, the dynamic loader; Debian bookworm's
# nftables 1.0.6). Nothing else: no shell, no package manager, no /etc. nft is there because the
# agent enforces NetworkPolicy with nftables (table inet routed-cni, one `nft -j -f -`
# transaction per change), and a container sees none of the node's programs; the agent finds
# it at /usr/sbin/nft. It needs only CAP_NET_ADMIN and no file under /etc (the
# agent's rules use protocol and port numbers, never names). With ROUTED_CNI_NETWORK_POLICY=false
# it is used once, to remove our table. Its default command is `routed-cni agent`, the
# DaemonSet's long-running side: it reads the node's podCIDR from the API server, installs the
# plugin and its conflist on the node (as `routed-cni install` does), keeps the routes between
# nodes, enforces NetworkPolicy and serves /healthz.
# `install` alone still works: run the image with `install --pod-subnet CIDR ...`.
#
# Two ways to build:
#  1. Offline, with the binary built on the host first (what CI and e2e/kind/run.sh do);
#     build-static.sh also assembles target/image-root from the host's nft (Debian: nftables):
#       scripts/build-static.sh && podman build --target prebuilt -t routed-cni .
#  2. Where a Rust image can be pulled (the last stage is the default target):
#       podman build -t routed-cni .
#
# Stage order matters: `prebuilt` comes FIRST and uses no other stage. Docker's legacy builder
# (DOCKER_BUILDKIT=0, or a docker without buildx) builds every stage up to the --target in file
# order, whether the target needs it or not (Docker's multi-stage docs; older buildah versions
# did too, containers/buildah#2469); with the Rust stages first, `--target prebuilt` would pull
# rust:1-bookworm and compile everything before copying the prebuilt binary. BuildKit builds
# only the stages the target depends on; with this order every builder does.

# --- 1: copy a binary built on the host by scripts/build-static.sh -------------------------
FROM scratch AS prebuilt
COPY target/image-root/ /
COPY target/x86_64-unknown-linux-gnu/release/routed-cni /routed-cni
ENTRYPOINT ["/routed-cni"]
CMD ["agent"]

# --- 2: build inside a Rust image ---------------------------------------------------------
FROM rust:1-bookworm AS builder
RUN apt-get update && apt-get install -y --no-install-recommends nftables \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/image-root.sh ./scripts/
RUN bash scripts/image-root.sh /image-root /usr/sbin/nft
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu

FROM scratch AS image
COPY --from=builder /image-root/ /
COPY --from=builder /src/target/x86_64-unknown-linux-gnu/release/routed-cni /routed-cni
ENTRYPOINT ["/routed-cni"]
CMD ["agent"]
