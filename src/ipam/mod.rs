//! Address management: the built-in on-disk store.

pub mod store;

pub use store::{attachment_hash, PoolLock, Record, Store};
