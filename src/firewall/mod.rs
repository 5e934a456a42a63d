//! Every firewall interaction of routed-cni. Callers say what they want — masquerade for a
//! pool installed, checked, removed or listed — and never build rule text or pick a program.
//!
//! - `iptables`: the iptables programs of one family and backend, listing with `-S` or
//!   `iptables-save` and parsing into `Rule`s (the one parser), and every change as one
//!   `iptables-restore --noflush -w` transaction. Which program runs (`iptables-nft`,
//!   `ip6tables-legacy`, …) is decided there and nowhere else.
//! - `backend`: which backend(s) the node uses (`iptablesBackend`, detection, the hint of
//!   where the last install went).
//! - `forward`: the per-pool FORWARD accepts that keep pods reachable under a DROP policy.
//! - `inspect`: what others installed in the forward path (both backends' filter tables,
//!   nftables tables such as firewalld's), read for doctor.
//! - `masquerade`: what a pool's NAT looks like (chain, rules, jump), and its listing.
//! - `pool`: a pool's forward and masquerade rules together: probe, install, check, removal.
//!
//! A backend that is not iptables (nftables for NetworkPolicy) is a sibling of `iptables.rs`
//! with its own description files; the masquerade callers do not change.

pub mod backend;
pub mod forward;
pub mod inspect;
pub mod iptables;
pub mod masquerade;
pub mod pool;

pub use iptables::{Backend, Rule};
pub use masquerade::{Installed, Masquerade};
pub use pool::{PoolRules, Probe};

/// IPv4 and IPv6 have separate tables; the project's one family type says which.
pub use crate::dataplane::Family;

/// The rules of one chain of the nat table, with counters; `None` when the chain does not
/// exist. For chains others own (kube-proxy's), which doctor reads to explain a path.
pub fn nat_chain(family: Family, chain: &str) -> crate::cni::error::Result<Option<Vec<Rule>>> {
    let listing = iptables::Iptables::new(family).list_counted("nat", Some(chain))?;
    Ok(listing.map(|l| l.rules_of(chain).cloned().collect()))
}
