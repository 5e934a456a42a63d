#!/usr/bin/env bash
# Assembles what the image carries besides the static routed-cni: the `nft` program, which the
# agent runs to enforce NetworkPolicy (table inet routed-cni), with exactly the shared objects
# it loads and nothing else: no shell, no package manager, no /etc.
#
#   scripts/image-root.sh DEST [NFT]
#
# DEST is emptied and rebuilt; NFT defaults to the nft in PATH (Debian: package nftables).
# Each library lands at the path the dynamic loader resolves it to (ldd's answer, symlinks
# followed to their file), the loader at the program's PT_INTERP path: the loader's built-in
# search path finds them there without an /etc/ld.so.cache. Used by scripts/build-static.sh
# (the Dockerfile's `prebuilt` stage copies target/image-root) and by the Dockerfile's
# `builder` stage (after apt-get install nftables), so both images hold the same files.
#
# What nft needs at run time was found by running it in a chroot of this tree and under
# strace (tests/policy_nft.rs passes with it: the agent's real batches, real packets): besides
# the libraries below only /dev/stdin (`nft -f -`, how the agent hands it a batch) and
# /dev/urandom, which every container runtime provides in /dev. nft tries /etc/iproute2/{group,
# rt_marks,rt_realms} and /etc/connlabel.conf at start and goes on without them (no rule of ours
# names a realm, group, mark or label). The agent's rules give protocols and ports as numbers,
# never names, so /etc/protocols and /etc/services are not needed either; without
# /etc/protocols a listing prints protocols as numbers (132 where the node's nft prints sctp),
# which the agent never relies on (applying reads back only chain, set and map names). The
# xtables extensions (for listing iptables-nft rules) are left out: the agent only lists its
# own table.
# Prints DEST on its last line.
set -euo pipefail
dest=${1:?usage: image-root.sh DEST [NFT]}
nft=${2:-$(command -v nft || true)}
[ -n "$nft" ] && [ -x "$nft" ] || {
    echo "image-root.sh: nft not found (apt-get install nftables), or pass its path" >&2
    exit 1
}
command -v ldd >/dev/null || {
    echo "image-root.sh: ldd is needed (package libc-bin)" >&2
    exit 1
}

rm -rf "$dest"
mkdir -p "$dest/usr/sbin"
cp -L "$nft" "$dest/usr/sbin/nft"

# copy PATH: the file behind PATH (symlinks followed), at PATH under DEST.
copy() {
    mkdir -p "$dest$(dirname "$1")"
    cp -L "$1" "$dest$1"
}

# ldd lines: "libx.so.1 => /lib/.../libx.so.1 (0x...)", the loader as "/lib64/ld-...so.2
# (0x...)", and linux-vdso (in the kernel, no file). An unresolved library ("not found") is
# an error: the image would carry an nft that cannot start.
deps=$(ldd "$nft")
if grep -q 'not found' <<<"$deps"; then
    echo "image-root.sh: $nft has unresolved libraries:" >&2
    grep 'not found' <<<"$deps" >&2
    exit 1
fi
n=0
while read -r lib; do
    copy "$lib"
    n=$((n + 1))
done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$deps")
# The loader named in nft's PT_INTERP must be among them, or nothing can start it.
interp=$(awk '$1 ~ /^\// && $1 ~ /ld-linux/ { print $1 }' <<<"$deps")
[ -n "$interp" ] && [ -e "$dest$interp" ] || {
    echo "image-root.sh: no dynamic loader found in ldd's answer for $nft" >&2
    exit 1
}
echo "image-root.sh: $nft and $n shared objects ($(du -sh "$dest" | cut -f1)) in $dest" >&2
echo "$dest"
