//! DEL: release the address first (so nothing can leak it), then remove the host veth by its
//! deterministic name. Everything already gone counts as done; other problems are collected
//! and reported together after every step has been tried.

use crate::cni::env::{Attachment, Command};
use crate::cni::error::{self, Result};
use crate::config::{Ipam, NetConf};
use crate::dataplane::{self, Netlink};
use crate::firewall::PoolRules;
use crate::ipam::store::LOCK_TIMEOUT;
use crate::ipam::{attachment_hash, delegate, inflight, Store};

use super::runtime;

pub fn run(conf: &NetConf, att: &Attachment) -> Result<()> {
    let host_veth = dataplane::host_veth_name(
        &conf.host_veth_prefix,
        &attachment_hash(&att.container_id, &att.ifname),
    );
    let mut errors = Vec::new();
    match &conf.ipam {
        // IPv4 pool first, the order ADD locks them in.
        Ipam::Builtin(pools) => {
            for pool in pools {
                let Some(store) = Store::open_existing(pool)? else {
                    continue;
                };
                // A lock timeout is a real fault: fail with code 11 so the runtime retries DEL.
                let lock = store.lock(LOCK_TIMEOUT)?;
                inflight::forget(&store, &att.container_id, &att.ifname);
                match lock.release(&att.container_id, &att.ifname) {
                    Ok(Some(r)) => {
                        crate::debug!("released {} of {}/{}", r.ip, att.container_id, att.ifname)
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
                if let Err(e) = PoolRules::for_pool(conf, pool.subnet).remove_if_pool_empty(&lock) {
                    errors.push(e);
                }
            }
        }
        // The delegated plugin keeps its own state; it must succeed on repeated DELs too.
        Ipam::Delegated { plugin } => {
            if let Err(e) = delegate::exec(plugin, Command::Del, &conf.raw) {
                errors.push(e);
            }
        }
    }
    crate::crashpoint::here("del:released");
    let rt = runtime()?;
    match rt.block_on(async { Netlink::connect()?.delete_link(&host_veth).await }) {
        Ok(true) => crate::debug!("deleted host veth {host_veth}"),
        Ok(false) => {}
        Err(e) => errors.push(e),
    }
    error::join(errors)
}
