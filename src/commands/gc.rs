//! GC: release every allocation of this network whose attachment the runtime no longer knows
//! (`cni.dev/valid-attachments`), with its host veth. Keeps going on errors and reports all.

use serde_json::Value;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::runtime;
use crate::cni::env::Command;
use crate::cni::error::{self, CniError, Result};
use crate::config::{Ipam, NetConf, PoolConfig};
use crate::dataplane::{self, Netlink};
use crate::firewall::Masquerade;
use crate::ipam::store::LOCK_TIMEOUT;
use crate::ipam::{attachment_hash, delegate, Store};

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

pub fn run(conf: &NetConf) -> Result<()> {
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
    let mut errors = Vec::new();
    let mut stale_veths = Vec::new();
    let mut kept_veths = HashSet::new();
    for pool in pools {
        if let Err(e) = gc_pool(conf, pool, &valid, &mut stale_veths, &mut kept_veths) {
            errors.push(e);
        }
    }
    // Host veths that route into a pool but belong to no valid attachment: left by a DEL
    // that was killed after releasing the address and before deleting the link.
    let mut valid_veths: HashSet<String> = valid
        .iter()
        .map(|(c, i)| dataplane::host_veth_name(&conf.host_veth_prefix, &attachment_hash(c, i)))
        .collect();
    valid_veths.extend(kept_veths);
    let rt = runtime()?;
    rt.block_on(async {
        let host = match Netlink::connect() {
            Ok(h) => h,
            Err(e) => return errors.push(e),
        };
        let routed = async {
            let mut out: Vec<(IpAddr, u32)> = Vec::new();
            for r in host.main_routes_of::<Ipv4Addr>().await? {
                out.extend(r.oif.filter(|_| r.prefix == 32).map(|o| (IpAddr::V4(r.dst), o)));
            }
            for r in host.main_routes_of::<Ipv6Addr>().await? {
                out.extend(r.oif.filter(|_| r.prefix == 128).map(|o| (IpAddr::V6(r.dst), o)));
            }
            Ok::<_, CniError>(out)
        };
        match routed.await {
            Ok(routes) => {
                for (dst, oif) in routes {
                    if !pools.iter().any(|p| p.subnet.contains(dst)) {
                        continue;
                    }
                    if let Ok(Some(link)) = host.link_by_index(oif).await {
                        match dataplane::link_name(&link) {
                            Some(n) if n.starts_with(&conf.host_veth_prefix) && !valid_veths.contains(&n) && !stale_veths.contains(&n) => {
                                crate::info!("GC: host veth {n} routes {dst} but belongs to no valid attachment");
                                stale_veths.push(n);
                            }
                            _ => {}
                        }
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        for veth in &stale_veths {
            if let Err(e) = host.delete_link(veth).await {
                errors.push(e);
            }
        }
    });
    error::join(errors)
}

/// Releases the stale allocations of one pool; notes their veths (to delete) and the veths of
/// the allocations it keeps.
fn gc_pool(
    conf: &NetConf,
    pool: &PoolConfig,
    valid: &HashSet<(String, String)>,
    stale_veths: &mut Vec<String>,
    kept_veths: &mut HashSet<String>,
) -> Result<()> {
    let Some(store) = Store::open_existing(pool) else {
        return Ok(());
    };
    let mut errors = Vec::new();
    let lock = store.lock(LOCK_TIMEOUT)?;
    for record in lock.records()? {
        // Other networks may share the pool directory; their runtime GCs them.
        if record.network != conf.name
            || valid.contains(&(record.container_id.clone(), record.ifname.clone()))
        {
            kept_veths.insert(record.host_veth.clone());
            continue;
        }
        match lock.release(&record.container_id, &record.ifname) {
            Ok(_) => {
                crate::info!(
                    "GC released {} of {}/{} (pod {}/{})",
                    record.ip,
                    record.container_id,
                    record.ifname,
                    record.pod_namespace.as_deref().unwrap_or("-"),
                    record.pod_name.as_deref().unwrap_or("-")
                );
                if !record.host_veth.is_empty() && !stale_veths.contains(&record.host_veth) {
                    stale_veths.push(record.host_veth);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if let Err(e) = Masquerade::for_pool(conf, pool.subnet).remove_if_pool_empty(&lock) {
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
