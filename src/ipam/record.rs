//! What the store keeps per allocation, and the hash that names an attachment's key file and
//! host veth.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::PathBuf;

/// sha256("<containerID>/<ifname>") in hex: names the key file; its first 11 characters name
/// the host veth.
pub fn attachment_hash(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}/{ifname}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One allocation, as stored in `<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
    #[serde(default)]
    pub host_veth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub netns: String,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created: u64,
}

impl Record {
    pub(super) fn is_for(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }
}

/// A record file that exists but cannot be read or parsed. Its address stays taken: we cannot
/// tell whose it is, so only a person may remove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub ip: IpAddr,
    pub path: PathBuf,
    pub reason: String,
    /// The attachment hash of the key file that leads to `ip`, if one does (filled in by a
    /// scan): it names the host veth the record may explain.
    pub attachment: Option<String>,
}

impl Unreadable {
    /// One line for people: what, why, and what to do.
    pub fn describe(&self) -> String {
        format!(
            "allocation record {} of {} is unreadable ({}); its address is never handed out \
             while it exists: inspect it, and remove it if no pod uses {}",
            self.path.display(),
            self.ip,
            self.reason,
            self.ip
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any byte string in a record file is an error or a record, never a panic.
        #[test]
        fn record_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = serde_json::from_slice::<Record>(&bytes);
        }
    }
}
