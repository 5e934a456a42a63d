//! NetworkPolicy enforcement (networking.k8s.io/v1) on this node: `ruleset` is what the node
//! should enforce, as data; `nft` makes the node's nftables table exactly that.
pub mod nft;
pub mod ruleset;
