//! Address management: the built-in on-disk store, or delegation to another IPAM plugin.
//!
//! - `record`: what is stored per allocation;
//! - `fs`: checked store directories, and every file reached relative to them;
//! - `lock`: the bounded pool lock;
//! - `store`: allocate, find and release under the lock;
//! - `scan`: the whole store read for people (`list`, `audit`, `doctor`);
//! - `delegate`: running another IPAM plugin;
//! - `attachments`: our record of each attachment a delegated plugin gave addresses to.

pub mod attachments;
pub mod delegate;
mod fs;
pub mod inflight;
mod lock;
pub mod record;
pub mod scan;
pub mod store;

pub use record::{attachment_hash, Record, Unreadable};
pub use scan::{scan, Found, PoolScan};
pub use store::{PoolLock, Store};
