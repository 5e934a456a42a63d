//! Address management: the built-in on-disk store, or delegation to another IPAM plugin.

pub mod delegate;
pub mod inflight;
pub mod store;

pub use store::{attachment_hash, PoolLock, Record, Store};
