//! GC: release every allocation of this network whose attachment the runtime no longer knows
//! (`cni.dev/valid-attachments`), with its host veth. Keeps going on errors and reports all.

use serde_json::Value;
use std::collections::HashSet;
use std::time::SystemTime;

use super::runtime;
use crate::cni::env::Command;
use crate::cni::error::{self, CniError, Result};
use crate::config::{Ipam, NetConf};
use crate::dataplane::{self, Netlink};
use crate::firewall::PoolRules;
use crate::ipam::store::LOCK_TIMEOUT;
use crate::ipam::{attachment_hash, delegate, inflight, PoolLock, Store};
use crate::leaks::{self, Leak, NodeState};

/// The attachments the runtime still uses, or `None` when it did not say (then GC does nothing).
/// libcni sends the list under both names; the spec text of 1.1.0 used the older one.
pub fn valid_attachments(raw: &Value) -> Result<Option<HashSet<(String, String)>>> {
    let Some(list) = raw
        .get("cni.dev/valid-attachments")
        .or_else(|| raw.get("cni.dev/attachments"))
    else {
        return Ok(None);
    };
    let items = list.as_array().ok_or_else(|| {
        CniError::invalid_config(
            "cni.dev/valid-attachments",
            format!("must be a list, got {list}"),
        )
    })?;
    items
        .iter()
        .map(|a| {
            let field = |k: &str| a.get(k).and_then(Value::as_str).map(str::to_string);
            match (field("containerID"), field("ifname")) {
                (Some(c), Some(i)) => Ok((c, i)),
                _ => Err(CniError::invalid_config(
                    "cni.dev/valid-attachments",
                    format!("entry {a} needs string fields containerID and ifname"),
                )),
            }
        })
        .collect::<Result<HashSet<_>>>()
        .map(Some)
}

/// `started`: when this process started, as close as it can tell to when the runtime made its
/// list; an ADD that finished after it is spared (see `inflight`).
pub fn run(conf: &NetConf, started: SystemTime) -> Result<()> {
    let pools = match &conf.ipam {
        Ipam::Builtin(pools) => pools,
        Ipam::Delegated { plugin } => {
            return delegate::exec(plugin, Command::Gc, &conf.raw).map(|_| ())
        }
    };
    let Some(valid) = valid_attachments(&conf.raw)? else {
        crate::info!("GC: no cni.dev/valid-attachments in the config; nothing to do");
        return Ok(());
    };
    // Every pool lock is held (IPv4 first, the order ADD takes them in) from the first record
    // read to the last veth deleted: no ADD can allocate, and so create a veth, between what GC
    // reads and what it deletes. An ADD that allocated earlier and is still running is spared
    // (`inflight`): the runtime made its list before that ADD began.
    let mut stores = Vec::new();
    for pool in pools {
        if let Some(store) = Store::open_existing(pool)? {
            stores.push(store);
        }
    }
    let locks = stores
        .iter()
        .map(|s| s.lock(LOCK_TIMEOUT))
        .collect::<Result<Vec<_>>>()?;
    let mut errors = Vec::new();
    let mut released_veths = HashSet::new();
    for (store, lock) in stores.iter().zip(&locks) {
        if let Err(e) = gc_pool(conf, store, lock, &valid, started, &mut released_veths) {
            errors.push(e);
        }
    }
    // What the pools hold now, every network's: a veth any of it names is not a leak.
    let mut records = Vec::new();
    for (store, lock) in stores.iter().zip(&locks) {
        match lock.records() {
            Ok(rs) => records.extend(rs.into_iter().map(|r| (store.pool().subnet.to_string(), r))),
            // Without every record GC cannot tell a live veth from a leak: delete none.
            Err(e) => {
                errors.push(e);
                return error::join(errors);
            }
        }
    }
    let valid_veths: HashSet<String> = valid
        .iter()
        .map(|(c, i)| dataplane::host_veth_name(&conf.host_veth_prefix, &attachment_hash(c, i)))
        .collect();
    let rt = runtime()?;
    let swept = rt.block_on(async {
        let host = Netlink::connect()?;
        let node = NodeState::observe(&host, &conf.host_veth_prefix).await?;
        let mut failed = Vec::new();
        for leak in leaks::find(&node, &records) {
            let Leak::Veth { name, routes } = leak else {
                continue;
            };
            // A veth of an allocation just released, or one left by a DEL killed after its
            // release, found by the address of one of our pools it routes.
            let ours_to_remove = released_veths.contains(&name)
                || routes
                    .iter()
                    .any(|ip| pools.iter().any(|p| p.subnet.contains(*ip)));
            if !ours_to_remove || valid_veths.contains(&name) {
                continue;
            }
            crate::info!("GC: deleting host veth {name}: no allocation explains it");
            if let Err(e) = host.delete_link(&name).await {
                failed.push(e);
            }
        }
        error::join(failed)
    });
    drop(locks);
    if let Err(e) = swept {
        errors.push(e);
    }
    error::join(errors)
}

/// Releases the stale allocations of one pool (its lock held by the caller) and notes their
/// veths.
fn gc_pool(
    conf: &NetConf,
    store: &Store,
    lock: &PoolLock,
    valid: &HashSet<(String, String)>,
    started: SystemTime,
    released_veths: &mut HashSet<String>,
) -> Result<()> {
    let mut errors = Vec::new();
    for record in lock.records()? {
        // Other networks may share the pool directory; their runtime GCs them.
        if record.network != conf.name
            || valid.contains(&(record.container_id.clone(), record.ifname.clone()))
        {
            continue;
        }
        if inflight::add_since(store, &record.container_id, &record.ifname, started) {
            crate::info!(
                "GC: keeping {} of {}/{}: its ADD ran while this GC did",
                record.ip,
                record.container_id,
                record.ifname
            );
            continue;
        }
        match lock.release(&record.container_id, &record.ifname) {
            Ok(_) => {
                inflight::forget(store, &record.container_id, &record.ifname);
                crate::info!(
                    "GC released {} of {}/{} (pod {}/{})",
                    record.ip,
                    record.container_id,
                    record.ifname,
                    record.pod_namespace.as_deref().unwrap_or("-"),
                    record.pod_name.as_deref().unwrap_or("-")
                );
                if !record.host_veth.is_empty() {
                    released_veths.insert(record.host_veth);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if let Err(e) = PoolRules::for_pool(conf, store.pool().subnet).remove_if_pool_empty(lock) {
        errors.push(e);
    }
    error::join(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_keys_and_absence() {
        let v = json!({"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]});
        assert!(valid_attachments(&v)
            .unwrap()
            .unwrap()
            .contains(&("a".to_string(), "eth0".to_string())));
        let v = json!({"cni.dev/attachments":[]});
        assert!(valid_attachments(&v).unwrap().unwrap().is_empty());
        assert!(valid_attachments(&json!({})).unwrap().is_none());
        assert!(valid_attachments(&json!({"cni.dev/attachments":[{"containerID":1}]})).is_err());
    }
}
