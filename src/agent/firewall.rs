//! The resync's firewall step: a firewalld reload (`firewall-cmd --reload` flushes every
//! iptables table), a ufw reload with MANAGE_BUILTINS=yes, or Docker or an admin flushing
//! FORWARD removes a pool's jumps (FORWARD -> RCNI-FWD-*, POSTROUTING -> RCNI-*). Only the
//! pool's next ADD would notice (its probe fails), so the pods already on the node stay
//! without masquerade, or dropped by a FORWARD DROP policy, until a new pod arrives. At every
//! resync the agent probes the rules of each pool of its conflist that holds an address, and
//! re-installs them as ADD does: under the pool lock, and only while the pool is not empty (an
//! empty pool's rules are rightly absent: its last DEL removed them).
//!
//! Cost: one lock and one `-C` probe (one iptables-restore exec) per non-empty pool per
//! resync; a listing and a restore only for a pool whose rules are missing.

use std::path::Path;

use crate::config::{self, Ipam, NetConf};
use crate::firewall::pool::{PoolRules, Probe};
use crate::ipam::store::{Store, LOCK_TIMEOUT};

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// One line per pool whose rules were missing and are back.
    pub restored: Vec<String>,
    /// One line per pool that could not be checked or repaired.
    pub failures: Vec<String>,
}

/// The plugin config of the conflist at `path`, validated as the plugin would (as install
/// validates the conflist it generates).
pub fn installed_conf(path: &Path) -> Result<NetConf, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let doc = config::parse_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    config::check_version(&doc).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut plugin = doc
        .get("plugins")
        .and_then(|p| p.get(0))
        .cloned()
        .ok_or_else(|| format!("{}: no plugins", path.display()))?;
    if !plugin.is_object() {
        return Err(format!("{}: plugins[0] is not an object", path.display()));
    }
    plugin["cniVersion"] = doc["cniVersion"].clone();
    plugin["name"] = doc["name"].clone();
    config::parse(plugin).map_err(|e| format!("{}: {e}", path.display()))
}

/// The pools of `conf` that hold at least one address, each with its open store. A pool
/// whose store is not there holds nothing.
fn populated(conf: &NetConf, failures: &mut Vec<String>) -> Vec<(PoolRules, Store)> {
    let Ipam::Builtin(pools) = &conf.ipam else {
        // The agent's conflist always uses the built-in store; a delegated plugin's
        // allocations are not ours to read.
        return Vec::new();
    };
    let mut out = Vec::new();
    for pool in pools {
        let empty = Store::open_existing(pool).and_then(|store| match store {
            None => Ok(None),
            Some(s) => {
                let empty = s.lock(LOCK_TIMEOUT)?.is_empty()?;
                Ok((!empty).then_some(s))
            }
        });
        match empty {
            Ok(Some(store)) => out.push((PoolRules::for_pool(conf, pool.subnet), store)),
            Ok(None) => {}
            Err(e) => failures.push(format!("pool {}: {e}", pool.subnet)),
        }
    }
    out
}

/// What the probe looks for, to name in the log.
fn jumps(rules: &PoolRules) -> String {
    let mut what = format!("FORWARD jump to {}", rules.forward.chain());
    if rules.masquerade {
        what.push_str(&format!(
            " and nat POSTROUTING jump to {}",
            rules.nat.chain()
        ));
    }
    what
}

/// Probes every populated pool of `conf` (all probes run at once) and re-installs the rules
/// of those that fail it.
pub fn repair(conf: &NetConf) -> Repairs {
    let mut done = Repairs::default();
    let pools = populated(conf, &mut done.failures);
    let probes: Vec<_> = pools.iter().map(|(rules, _)| rules.probe()).collect();
    for ((rules, store), probe) in pools.iter().zip(probes) {
        let subnet = rules.forward.subnet;
        match probe.and_then(Probe::wait) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                done.failures.push(format!("pool {subnet}: probe: {e}"));
                continue;
            }
        }
        // Under the lock, as ADD installs: no DEL can empty the pool (and remove the rules)
        // meanwhile, and a pool emptied since the probe keeps its rules absent.
        let fixed = store.lock(LOCK_TIMEOUT).and_then(|lock| {
            if lock.is_empty()? {
                return Ok(false);
            }
            rules.install().map(|()| true)
        });
        match fixed {
            Ok(true) => done.restored.push(format!(
                "firewall rules of pool {subnet} were missing ({} not all in place; a firewalld or ufw reload, or a flush of FORWARD or POSTROUTING, removes them): restored",
                jumps(rules)
            )),
            Ok(false) => {}
            Err(e) => done.failures.push(format!(
                "firewall rules of pool {subnet} are missing ({}) and could not be restored: {e}",
                jumps(rules)
            )),
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, doc: &serde_json::Value) -> std::path::PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("10-routed-cni.conflist");
        std::fs::write(&p, serde_json::to_vec(doc).unwrap()).unwrap();
        p
    }

    #[test]
    fn reads_the_plugin_config_of_an_installed_conflist() {
        let dir = std::env::temp_dir().join(format!("rcni-agent-fw-{}", std::process::id()));
        let doc = json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
            {"type": "routed-cni", "ipam": {"ranges": [[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:10:244:3::/64"}]]},
             "masquerade": true, "nonMasqueradeCIDRs": ["10.244.0.0/16"]},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}]});
        let conf = installed_conf(&write(&dir, &doc)).unwrap();
        assert_eq!(conf.name, "k8s-pod-network");
        assert!(conf.masquerade);
        let Ipam::Builtin(pools) = &conf.ipam else {
            panic!("{:?}", conf.ipam)
        };
        let subnets: Vec<String> = pools.iter().map(|p| p.subnet.to_string()).collect();
        assert_eq!(subnets, ["10.244.3.0/24", "fd00:10:244:3::/64"]);

        let mut bad = doc.clone();
        bad["cniVersion"] = json!("9.9.9");
        assert!(installed_conf(&write(&dir, &bad))
            .unwrap_err()
            .contains("cniVersion"));
        let no_plugins = json!({"cniVersion": "1.0.0", "name": "n", "plugins": []});
        assert!(installed_conf(&write(&dir, &no_plugins))
            .unwrap_err()
            .contains("no plugins"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pools_without_a_store_or_an_address_are_not_touched() {
        // A dataDir that does not exist: no store, so no probe and no install (which would
        // run iptables on this machine).
        let dir = std::env::temp_dir().join(format!("rcni-agent-fw-none-{}", std::process::id()));
        let conf = config::parse(
            json!({"cniVersion": "1.0.0", "name": "n", "type": "routed-cni",
            "ipam": {"subnet": "10.244.3.0/24", "dataDir": dir.join("store").to_str().unwrap()}}),
        )
        .unwrap();
        assert_eq!(repair(&conf), Repairs::default());
        // The pool's store exists but holds no address.
        let Ipam::Builtin(pools) = &conf.ipam else {
            panic!()
        };
        Store::open(&pools[0]).unwrap();
        assert_eq!(repair(&conf), Repairs::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
