//! Delegated IPAM: run another IPAM plugin (host-local, whereabouts, …) from CNI_PATH with the
//! same config and environment, and read the address it hands out.

use ipnetwork::IpNetwork;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use crate::cni::env::{self, Command};
use crate::cni::error::{CniError, Code, Result};

/// Finds `plugin` in the `CNI_PATH` directories.
fn find(plugin: &str) -> Result<PathBuf> {
    let path = env::var("CNI_PATH")?.unwrap_or_default();
    if path.is_empty() {
        return Err(CniError::invalid_env(
            "CNI_PATH",
            format!("is empty; it must list the directories that hold the IPAM plugin {plugin:?}"),
        ));
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                Code::DelegatedIpam,
                format!("IPAM plugin {plugin:?} was not found in CNI_PATH={path}; install it there or fix ipam.type"),
            )
        })
}

/// Runs `plugin` for `command` with `config` on stdin. Returns its stdout document, if any.
pub fn exec(plugin: &str, command: Command, config: &Value) -> Result<Option<Value>> {
    let bin = find(plugin)?;
    let mut child = Process::new(&bin)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CniError::new(
                Code::DelegatedIpam,
                format!("run IPAM plugin {}: {e}", bin.display()),
            )
        })?;
    let input = serde_json::to_vec(config).expect("config serializes");
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading stdin is judged by its exit status below.
        let _ = stdin.write_all(&input);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            Code::DelegatedIpam,
            format!("wait for IPAM plugin {}: {e}", bin.display()),
        )
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        crate::debug!(
            "IPAM plugin {plugin} {} stderr: {}",
            command.as_str(),
            stderr.trim()
        );
    }
    let doc: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let (code, msg) = match &doc {
            Some(d) => (
                d.get("code").and_then(Value::as_u64).unwrap_or(0),
                format!(
                    "{}{}",
                    d.get("msg").and_then(Value::as_str).unwrap_or(""),
                    d.get("details")
                        .and_then(Value::as_str)
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default()
                ),
            ),
            None => (0, stderr.trim().to_string()),
        };
        return Err(CniError::new(
            Code::DelegatedIpam,
            format!(
                "IPAM plugin {plugin} {} failed (code {code}): {msg}",
                command.as_str()
            ),
        ));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    doc.map(Some).ok_or_else(|| {
        CniError::new(
            Code::DelegatedIpam,
            format!(
                "IPAM plugin {plugin} {} printed something that is not JSON",
                command.as_str()
            ),
        )
    })
}

/// The pod's addresses from an IPAM result: the first of each family, IPv4 first, each with
/// the network it came from.
pub fn pod_addresses(result: &Value) -> Result<Vec<IpNetwork>> {
    let all: Vec<IpNetwork> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .filter_map(|a| a.parse::<IpNetwork>().ok())
        .collect();
    let out: Vec<IpNetwork> = [
        all.iter().find(|n| n.is_ipv4()),
        all.iter().find(|n| n.is_ipv6()),
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect();
    if out.is_empty() {
        return Err(CniError::new(
            Code::DelegatedIpam,
            format!("the IPAM plugin returned no address: {result}"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_one_address_per_family_ipv4_first() {
        let r = json!({"cniVersion":"0.3.1","ips":[{"version":"6","address":"fd00::5/64"},{"version":"4","address":"10.1.0.5/24","gateway":"10.1.0.1"},{"version":"4","address":"10.2.0.5/24"}]});
        let n = pod_addresses(&r).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].ip().to_string(), "10.1.0.5");
        assert_eq!(n[0].network().to_string(), "10.1.0.0");
        assert_eq!(n[1].ip().to_string(), "fd00::5");
        let v6 = pod_addresses(&json!({"ips":[{"address":"fd00::7/64"}]})).unwrap();
        assert_eq!(v6.len(), 1);
        assert_eq!(
            pod_addresses(&json!({"ips":[]})).unwrap_err().code,
            Code::DelegatedIpam
        );
    }
}
