//! DEL: release the address first (so nothing can leak it), then remove the host veth by its
//! deterministic name. Everything already gone counts as done.

use crate::cni::env::Attachment;
use crate::cni::error::{self, Result};
use crate::config::{Ipam, NetConf};
use crate::dataplane::{self, Netlink};
use crate::ipam::store::LOCK_TIMEOUT;
use crate::ipam::{attachment_hash, Store};
use crate::nat::PoolNat;

use super::runtime;

pub fn run(conf: &NetConf, att: &Attachment) -> Result<()> {
    let Ipam::Builtin(pool) = &conf.ipam else {
        // Nothing of ours can exist for a config we never accepted on ADD.
        return Ok(());
    };
    let host_veth = dataplane::host_veth_name(
        &conf.host_veth_prefix,
        &attachment_hash(&att.container_id, &att.ifname),
    );
    let mut errors = Vec::new();
    if let Some(store) = Store::open_existing(pool) {
        // A lock timeout is a real fault: fail with code 11 so the runtime retries DEL.
        let lock = store.lock(LOCK_TIMEOUT)?;
        match lock.release(&att.container_id, &att.ifname) {
            Ok(Some(r)) => {
                crate::debug!("released {} of {}/{}", r.ip, att.container_id, att.ifname)
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        match lock.is_empty() {
            Ok(true) => {
                let nat = PoolNat {
                    subnet: pool.subnet,
                    non_masquerade: conf.non_masquerade_cidrs.clone(),
                };
                if let Err(e) = nat.uninstall() {
                    errors.push(e);
                }
            }
            Ok(false) => {}
            Err(e) => errors.push(e),
        }
    }
    let rt = runtime()?;
    let removed = rt.block_on(async { Netlink::connect()?.delete_link(&host_veth).await });
    match removed {
        Ok(true) => crate::debug!("deleted host veth {host_veth}"),
        Ok(false) => {}
        Err(e) => errors.push(e),
    }
    error::join(errors)
}
