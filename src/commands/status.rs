//! STATUS: can this node service an ADD right now? The store must be usable and the pool must
//! have room; a delegated IPAM plugin is asked the same.

use crate::cni::env::Command;
use crate::cni::error::{CniError, Code, Result};
use crate::config::{Ipam, NetConf, PoolConfig};
use crate::ipam::{delegate, Store};
use std::time::Duration;

/// STATUS should answer quickly even when ADDs keep the lock busy.
const STATUS_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

fn not_available(msg: String) -> CniError {
    CniError::new(Code::NotAvailable, msg)
}

pub fn run(conf: &NetConf) -> Result<()> {
    match &conf.ipam {
        // Every pool must have room: a dual-stack pod needs an address from each.
        Ipam::Builtin(pools) => pools.iter().try_for_each(pool_status),
        Ipam::Delegated { plugin } => delegate::exec(plugin, Command::Status, &conf.raw)
            .map(|_| ())
            .map_err(|e| not_available(e.msg)),
    }
}

fn pool_status(pool: &PoolConfig) -> Result<()> {
    let store = Store::open(pool)
        .map_err(|e| not_available(format!("the IPAM store is unusable: {}", e.msg)))?;
    let lock = store
        .lock(STATUS_LOCK_TIMEOUT)
        .map_err(|e| not_available(format!("the IPAM store is unusable: {}", e.msg)))?;
    let used = lock
        .addresses_in_use()
        .map_err(|e| not_available(format!("the IPAM store is unreadable: {}", e.msg)))?
        .into_iter()
        .filter(|ip| pool.in_range(*ip))
        .count() as u128;
    if used >= pool.size() {
        return Err(not_available(format!(
            "pool {} (range {}-{}) is exhausted: all {} addresses are allocated",
            pool.subnet,
            pool.range_start,
            pool.range_end,
            pool.size()
        )));
    }
    Ok(())
}
