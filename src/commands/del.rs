//! DEL: release the address first (so nothing can leak it), then remove the host veth by its
//! deterministic name. With delegated IPAM our record of the attachment goes last, after the
//! veth (a DEL killed before it leaves a record that audit and GC find), and with it the
//! masquerade of any subnet no other record uses. Everything already gone counts as done;
//! other problems are collected and reported together after every step has been tried.
//!
//! The last pod of a pool takes the pool's rules with it: their removal (iptables-restore, a
//! kernel commit that waits out an RCU grace period) is started under the pool lock and runs
//! while the veth is deleted (which waits for its own), and the lock is kept until it is done.

use crate::cni::env::{Attachment, Command};
use crate::cni::error::{self, Result};
use crate::config::{Ipam, NetConf};
use crate::dataplane::{self, runtime, Netlink};
use crate::firewall::PoolRules;
use crate::ipam::attachments::Attachments;
use crate::ipam::store::LOCK_TIMEOUT;
use crate::ipam::{attachment_hash, delegate, inflight, Store};

pub fn run(conf: &NetConf, att: &Attachment) -> Result<()> {
    let host_veth = dataplane::host_veth_name(
        &conf.host_veth_prefix,
        &attachment_hash(&att.container_id, &att.ifname),
    );
    let mut errors = Vec::new();
    // Opened first: they outlive their locks, which the pools' rule removals keep until done.
    let stores = match &conf.ipam {
        Ipam::Builtin(pools) => pools
            .iter()
            .filter_map(|pool| Store::open_existing(pool).transpose())
            .collect::<Result<Vec<Store>>>()?,
        // The delegated plugin keeps its own state; it must succeed on repeated DELs too.
        Ipam::Delegated { plugin } => {
            if let Err(e) = delegate::exec(plugin, Command::Del, &conf.raw) {
                errors.push(e);
            }
            Vec::new()
        }
    };
    let mut removals = Vec::new();
    let mut released = Vec::new();
    // IPv4 pool first, the order ADD locks them in.
    for store in &stores {
        // A lock timeout is a real fault: fail with code 11 so the runtime retries DEL.
        let lock = store.lock(LOCK_TIMEOUT)?;
        inflight::forget(store, &att.container_id, &att.ifname);
        match lock.release(&att.container_id, &att.ifname) {
            Ok(Some(r)) => {
                crate::debug!("released {} of {}/{}", r.ip, att.container_id, att.ifname);
                released.push(r.ip);
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        let rules = PoolRules::for_pool(conf, store.pool().subnet);
        match rules.start_removal_if_pool_empty(&lock) {
            Ok(Some(removal)) => removals.push((removal, lock)),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    crate::crashpoint::here("del:released");
    let rt = runtime()?;
    match rt.block_on(async { Netlink::connect()?.delete_link(&host_veth).await }) {
        Ok(true) => crate::debug!("deleted host veth {host_veth}"),
        Ok(false) => {}
        Err(e) => errors.push(e),
    }
    for (removal, lock) in removals {
        if let Err(e) = removal.finish() {
            errors.push(e);
        }
        drop(lock);
    }
    // With the veth gone no packet of the pod's can recreate them.
    for ip in released {
        dataplane::conntrack::forget_logged(ip, "released");
    }
    if let Some(ns) = att.pod.namespace.as_deref() {
        // Logged, not fatal: a name left in the set holds back nothing that exists.
        if let Err(e) = crate::policy::holdback::release(&conf.data_dir, ns, &host_veth) {
            crate::warn!("NetworkPolicy hold of {host_veth} not lifted: {e}");
        }
    }
    // Only once the plugin gave the addresses back and the veth is gone: until then the record
    // is what explains them, and a retried DEL or GC still finds it.
    if matches!(conf.ipam, Ipam::Delegated { .. }) && errors.is_empty() {
        if let Err(e) = forget_delegated(conf, att) {
            errors.push(e);
        }
    }
    error::join(errors)
}

/// Removes our record of a delegated attachment, and the masquerade of each subnet no other
/// record names, under the records' lock (which ADD holds while it installs them).
fn forget_delegated(conf: &NetConf, att: &Attachment) -> Result<()> {
    let Some(records) = Attachments::open_existing(&conf.data_dir)? else {
        return Ok(());
    };
    let lock = records.lock()?;
    inflight::forget_in(&records.adding_dir(), &att.container_id, &att.ifname);
    let (released, freed) = lock.release(&att.container_id, &att.ifname)?;
    if let Some(r) = released {
        crate::debug!(
            "forgot delegated attachment {}/{}",
            r.container_id,
            r.ifname
        );
    }
    for subnet in freed {
        crate::debug!("{subnet} has no delegated pod left: removing its masquerade");
        PoolRules::for_pool(conf, subnet).uninstall()?;
    }
    Ok(())
}
