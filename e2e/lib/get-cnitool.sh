#!/usr/bin/env bash
# Builds upstream cnitool offline from Debian's archive: Debian ships libcni
# (golang-github-appc-cni-dev) but leaves cnitool out of the binary package, so we take
# cnitool.go from the matching source package (fetched through a private apt config; /etc/apt
# is not touched) and build it in GOPATH mode against the packaged libcni.
#
# usage: get-cnitool.sh [WORKDIR]    prints the path of the cnitool binary on its last line
set -euo pipefail
WORK=${1:-/var/tmp/routed-cni-cnitool}
BIN=$WORK/bin/cnitool
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
need=()
for p in golang-go golang-github-appc-cni-dev containernetworking-plugins xz-utils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
version=$(dpkg-query -W -f='${Version}' golang-github-appc-cni-dev)
src=$WORK/apt-src
mkdir -p "$src/lists/partial" "$src/cache/archives/partial"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" >"$src/sources.list"
apt_src=(-o Dir::Etc::SourceList="$src/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$src/lists" -o Dir::Cache="$src/cache" -o APT::Sandbox::User=root)
apt-get "${apt_src[@]}" update -qq >&2
(cd "$src" && apt-get "${apt_src[@]}" source --download-only -qq "golang-github-appc-cni=$version" >&2)
orig=$(ls "$src"/golang-github-appc-cni_"${version%-*}".orig.tar.*)
rm -rf "$src/tree" && mkdir -p "$src/tree"
tar -xf "$orig" -C "$src/tree" --strip-components=1
pkg=$WORK/gopath/src/cnitool
mkdir -p "$pkg" "$(dirname "$BIN")"
cp "$src/tree/cnitool/cnitool.go" "$pkg/"
(cd "$pkg" && env GO111MODULE=off GOPROXY=off GOFLAGS= GOSUMDB=off CGO_ENABLED=0 \
    GOPATH="$WORK/gopath:/usr/share/gocode" GOCACHE="$WORK/gocache" \
    go build -trimpath -o "$BIN" . >&2)
echo "$BIN"
