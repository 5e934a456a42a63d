# Prepares what e2e/70-containerd-cri.sh needs to act as kubelet, from Debian's archive only:
# containerd (with its CRI plugin) and runc, Debian's gRPC/protobuf for /usr/bin/python3, and
# Python stubs for the CRI API. Debian packages no CRI proto and no crictl, but the containerd
# SOURCE package vendors k8s.io/cri-api, so api.proto comes from there (fetched through a private
# apt config; /etc/apt is not touched) and protoc turns it into api_pb2.py.
#
# usage: bash cri-prepare.sh [CACHEDIR]   prints the directory holding api_pb2.py on its last line
# Run it with bash (not executable on purpose: scripts/test.sh runs every executable e2e/*.sh).
set -euo pipefail
CACHE=${1:-/var/tmp/routed-cni-cri}
export DEBIAN_FRONTEND=noninteractive

# Installed for real ("ii"): `dpkg -s` also succeeds for a removed package whose conffiles stay.
installed() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]; }
need=()
for p in containerd runc containernetworking-plugins python3 python3-grpcio python3-protobuf \
    protobuf-compiler gcc libc6-dev xz-utils iproute2 iptables iputils-ping socat jq util-linux; do
    installed "$p" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The stubs depend only on the CRI API version vendored by this containerd.
version=$(dpkg-query -W -f='${source:Version}' containerd)
stubs=$CACHE/stubs-${version//[^A-Za-z0-9.+-]/_}
if [ -s "$stubs/api_pb2.py" ]; then
    echo "$stubs"
    exit 0
fi

src=$CACHE/apt-src
mkdir -p "$src/lists/partial" "$src/cache/archives/partial" "$src/dl"
key=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$src/sources.list" <<EOF
deb-src [signed-by=$key] http://deb.debian.org/debian bookworm main
deb-src [signed-by=$key] http://deb.debian.org/debian bookworm-updates main
deb-src [signed-by=$key] http://deb.debian.org/debian-security bookworm-security main
EOF
apt_src=(-o Dir::Etc::SourceList="$src/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$src/lists" -o Dir::Cache="$src/cache" -o APT::Sandbox::User=root)
if ! ls "$src"/dl/containerd_*.orig.tar.* >/dev/null 2>&1; then
    apt-get "${apt_src[@]}" update -qq >&2
    # The source of the installed binary if the archive still has it, else the current one: the
    # runtime.v1 CRI API is stable, and any bookworm containerd vendors the same cri-api.
    (cd "$src/dl" && { apt-get "${apt_src[@]}" source --download-only -qq "containerd=$version" >&2 ||
        apt-get "${apt_src[@]}" source --download-only -qq containerd >&2; })
fi
orig=$(ls "$src"/dl/containerd_*.orig.tar.* | head -1)
proto=$(tar -tf "$orig" | awk '/vendor\/k8s\.io\/cri-api\/pkg\/apis\/runtime\/v1\/api\.proto$/ && !found { print; found = 1 }')
[ -n "$proto" ] || { echo "no CRI runtime/v1 api.proto in $orig" >&2; exit 1; }

tmp=$(mktemp -d "$CACHE/stubs.XXXX")
trap 'rm -rf "$tmp"' EXIT
tar -xOf "$orig" "$proto" >"$tmp/upstream.proto"
# The gogoproto import and options steer Go code generation only, and gogo.proto is not in the
# tarball: drop them so protoc can compile the file on its own.
grep -v -e 'gogo\.proto' -e '^option (gogoproto\.' "$tmp/upstream.proto" >"$tmp/api.proto"
(cd "$tmp" && protoc -I. --python_out=. api.proto)
/usr/bin/python3 -c "import sys; sys.path.insert(0, '$tmp'); import grpc, api_pb2; api_pb2.DESCRIPTOR.services_by_name['RuntimeService']"
echo "$proto from $(basename "$orig")" >"$tmp/SOURCE"
rm -rf "$stubs"
mv "$tmp" "$stubs"
trap - EXIT
rm -rf "$src" # the 20 MB source tarball and apt lists are not needed once the stubs exist
echo "$stubs"
