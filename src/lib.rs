//! routed-cni: a CNI plugin that wires pods the calico way — a veth per pod, a /32 on the pod,
//! a gateway that exists nowhere (proxy ARP on the host end), a /32 route back, masquerade for
//! traffic leaving the cluster — with its own crash-safe IPAM store.

pub mod log;

pub mod cni {
    pub mod env;
    pub mod error;
    pub mod types;
}
pub mod agent;
pub mod audit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod crashpoint;
pub mod dataplane;
pub mod doctor;
pub mod firewall;
pub mod install;
pub mod ipam;
pub mod leaks;
pub mod list;
pub mod netns;
pub mod policy;
