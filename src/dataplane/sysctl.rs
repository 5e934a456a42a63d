//! Sysctls under /proc/sys, read before written: cheap, idempotent, and CHECK can reuse the
//! reads. /proc/sys/net shows the namespace of the thread that opens it.

use std::fs;

use crate::cni::error::{CniError, Result};

pub fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Reads `key` ("net/ipv4/conf/eth0/proxy_arp"); `None` when it does not exist.
pub fn read(key: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/sys/{key}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Sets `key` to `value` unless it already holds it.
pub fn ensure(key: &str, value: &str) -> Result<()> {
    if read(key).as_deref() == Some(value) {
        return Ok(());
    }
    fs::write(format!("/proc/sys/{key}"), value).map_err(|e| {
        CniError::dataplane(format!(
            "set sysctl {} = {value}: {e}",
            key.replace('/', ".")
        ))
    })
}
