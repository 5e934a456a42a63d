//! What `hostVethPrefix` may be. GC, audit and the host-route takeover treat `<prefix><11 hex>`
//! veths as routed-cni's (`dataplane::owned`), so the prefix must fit the 15-byte name limit and
//! must not be one other software names its interfaces with.

use super::DEFAULT_HOST_VETH_PREFIX;
use crate::cni::error::{CniError, Result};

/// Length and characters, then overlap with other software's names.
pub(super) fn check(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > 4 || !prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(CniError::invalid_config(
            "hostVethPrefix",
            format!("{prefix:?} must be 1 to 4 letters or digits (11 hash characters follow, and names have at most 15)"),
        ));
    }
    check_prefix_collision(prefix)
}

/// Name prefixes other software gives its interfaces (kernel naming, container runtimes, other
/// CNI plugins, tunnels, cloud VPC plugins).
const FOREIGN_IFNAME_PREFIXES: &[&str] = &[
    "eth",
    "en",
    "wl",
    "ww",
    "ib",
    "lo",
    "bond",
    "team",
    "br",
    "virbr",
    "vlan",
    "vxlan",
    "veth",
    "tun",
    "tap",
    "dummy",
    "gre",
    "sit",
    "ip6",
    "wg",
    "docker",
    "podman",
    "cni",
    "cbr",
    "cali",
    "cilium",
    "lxc",
    "flannel",
    "weave",
    "kube",
    "nodelocaldns",
    "genev",
    "ovs",
    "gke",
    "eni",
    "azv",
    "vmnet",
    "tailscale",
    "zt",
];

/// Refuses a hostVethPrefix that shares a beginning with a common interface name: GC, audit and
/// the host-route takeover treat `<prefix><11 hex>` veths as ours, so the prefix must not be one
/// other software may use (calico's `cali` + 11 hex is exactly such a name). The rule is
/// symmetric: `e` would overlap `eth` as much as `ethx` would.
fn check_prefix_collision(prefix: &str) -> Result<()> {
    let lower = prefix.to_ascii_lowercase();
    match FOREIGN_IFNAME_PREFIXES
        .iter()
        .find(|f| f.starts_with(lower.as_str()) || lower.starts_with(**f))
    {
        None => Ok(()),
        Some(f) => Err(CniError::invalid_config(
            "hostVethPrefix",
            format!(
                "{prefix:?} overlaps {f:?}, a name prefix other interfaces on a node use, and \
                 routed-cni deletes and reports veths named <prefix><11 hex> as its own; \
                 use the default {DEFAULT_HOST_VETH_PREFIX:?} or another prefix no interface name starts with"
            ),
        )),
    }
}
