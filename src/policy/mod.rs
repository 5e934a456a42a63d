//! NetworkPolicy enforcement (networking.k8s.io/v1) on this node: `model` is the agent's cache
//! of Pods, Namespaces and NetworkPolicies, `selector` label selectors, `compile` turns the
//! cache into `ruleset`, what the node should enforce, as data; `nft` makes the node's
//! nftables table exactly that; `holdback` keeps a new pod's traffic back until then. `eval`
//! says what a Ruleset does with a packet and `explain` answers people from the agent's view
//! (`routed-cni policy`, doctor), which `client` asks for; `show` is `routed-cni policy`.
pub mod client;
pub mod compile;
pub mod eval;
pub mod explain;
pub mod holdback;
pub mod model;
pub mod nft;
pub mod ruleset;
pub mod selector;
pub mod show;
