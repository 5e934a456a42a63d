"""Packs one static binary as an OCI image-layout tarball that `ctr images import` accepts, so
containerd's CRI plugin has a sandbox ("pause") image without any registry.

usage: cri-image.py BINARY IMAGE_REF OUTPUT.tar

The image has a single uncompressed layer holding the binary as /pause, runs it as its
entrypoint as user 65535 (like registry.k8s.io/pause), and the index carries the image name
annotation containerd uses on import. Everything is deterministic (fixed mtimes), so the same
binary always gives the same digests. Standard library only.
"""

import hashlib
import io
import json
import platform
import sys
import tarfile

GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def digest(blob):
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def add(tar, name, blob=None, mode=0o644):
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    if blob is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(blob), mode
        tar.addfile(info, io.BytesIO(blob))


def layer_with(binary):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "pause", binary, mode=0o755)
    return out.getvalue()


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    binary_path, ref, output = argv[1:]
    arch = GOARCH.get(platform.machine(), platform.machine())
    with open(binary_path, "rb") as f:
        layer = layer_with(f.read())
    config = canonical({
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "e2e/lib/cri-image.py"}],
    })
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(layer), "size": len(layer)}],
    })
    index = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(manifest),
            "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": ref,
                            "org.opencontainers.image.ref.name": ref.rpartition(":")[2]},
        }],
    })
    with tarfile.open(output, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "blobs")
        add(tar, "blobs/sha256")
        for blob in (layer, config, manifest):
            add(tar, "blobs/sha256/" + digest(blob).split(":", 1)[1], blob)
        add(tar, "oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
        add(tar, "index.json", index)
    print(ref, digest(manifest))


if __name__ == "__main__":
    main(sys.argv)
