//! NetworkPolicy enforcement (networking.k8s.io/v1) on this node: `ruleset` is what the node
//! should enforce, as data.
pub mod ruleset;
