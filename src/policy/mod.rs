//! NetworkPolicy enforcement (networking.k8s.io/v1) on this node: `model` is the agent's cache
//! of Pods, Namespaces and NetworkPolicies, `selector` label selectors, `compile` turns the
//! cache into `ruleset`, what the node should enforce, as data; `nft` makes the node's
//! nftables table exactly that; `holdback` keeps a new pod's traffic back until then.
pub mod compile;
#[cfg(test)]
pub mod eval;
pub mod holdback;
pub mod model;
pub mod nft;
pub mod ruleset;
pub mod selector;
