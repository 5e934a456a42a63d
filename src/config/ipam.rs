//! The `ipam` section: the built-in store's pools (one range per address family), or the
//! name of another IPAM plugin to delegate to.

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::PathBuf;

use super::{addr_from_u128, addr_to_u128, family_name, str_field, DEFAULT_DATA_DIR};
use crate::cni::error::{CniError, Code, Result};

/// An address range handed out by the built-in store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub subnet: IpNetwork,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    pub data_dir: PathBuf,
}

impl PoolConfig {
    /// How many addresses the range holds (an IPv6 /64 holds 2^64).
    pub fn size(&self) -> u128 {
        addr_to_u128(self.range_end) - addr_to_u128(self.range_start) + 1
    }

    pub fn is_ipv6(&self) -> bool {
        self.subnet.is_ipv6()
    }

    /// The host prefix length of one pod address: /32 or /128.
    pub fn host_prefix(&self) -> u8 {
        if self.is_ipv6() {
            128
        } else {
            32
        }
    }

    pub fn in_range(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.range_start.is_ipv4()
            && (addr_to_u128(self.range_start)..=addr_to_u128(self.range_end))
                .contains(&addr_to_u128(ip))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipam {
    /// Our own on-disk store: one pool per address family (IPv4 first), so a dual-stack pod
    /// gets one address from each.
    Builtin(Vec<PoolConfig>),
    /// Another IPAM plugin, run from CNI_PATH.
    Delegated { plugin: String },
}

pub(super) fn parse_subnet(s: &str, path: &str) -> Result<IpNetwork> {
    let net: IpNetwork = s.parse().map_err(|_| {
        CniError::invalid_config(
            path,
            format!("{s:?} is not a CIDR like 10.244.1.0/24 or fd00:10:244:1::/64"),
        )
    })?;
    if net.ip() != net.network() {
        return Err(CniError::invalid_config(
            path,
            format!(
                "{s:?} has host bits set; did you mean {}/{}?",
                net.network(),
                net.prefix()
            ),
        ));
    }
    Ok(net)
}

fn parse_addr(s: &str, path: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| CniError::invalid_config(path, format!("{s:?} is not an IP address")))
}

/// One range: subnet plus optional start/end, network and broadcast excluded.
fn parse_range(o: &Map<String, Value>, prefix: &str, data_dir: PathBuf) -> Result<PoolConfig> {
    let subnet_key = format!("{prefix}subnet");
    let subnet_s = str_field(o, "subnet", &subnet_key)?.ok_or_else(|| {
        CniError::invalid_config(
            &subnet_key,
            "is missing; set the pod subnet of this node, e.g. \"10.244.1.0/24\"",
        )
    })?;
    let subnet = parse_subnet(subnet_s, &subnet_key)?;
    let max_prefix = if subnet.is_ipv4() { 30 } else { 126 };
    if subnet.prefix() > max_prefix {
        return Err(CniError::invalid_config(
            &subnet_key,
            format!("{subnet} is too small: a pool needs at least a /{max_prefix} (the first and last addresses are never handed out)"),
        ));
    }
    // The first address is the network (IPv6: the subnet-router anycast address), the last the
    // broadcast (IPv6: kept out too, as host-local does).
    let first = addr_from_u128(subnet.ip(), addr_to_u128(subnet.network()) + 1);
    let last = addr_from_u128(subnet.ip(), addr_to_u128(subnet.broadcast()) - 1);
    let bound = |key: &str, default: IpAddr| -> Result<IpAddr> {
        let path = format!("{prefix}{key}");
        match str_field(o, key, &path)? {
            None => Ok(default),
            Some(s) => {
                let a = parse_addr(s, &path)?;
                if !subnet.contains(a) {
                    return Err(CniError::invalid_config(
                        &path,
                        format!("{a} is outside subnet {subnet}"),
                    ));
                }
                if a == subnet.network() || a == subnet.broadcast() {
                    return Err(CniError::invalid_config(
                        &path,
                        format!("{a} is the first (network) or last (broadcast) address of {subnet}; pick one between {first} and {last}"),
                    ));
                }
                Ok(a)
            }
        }
    };
    let range_start = bound("rangeStart", first)?;
    let range_end = bound("rangeEnd", last)?;
    if addr_to_u128(range_start) > addr_to_u128(range_end) {
        return Err(CniError::invalid_config(
            &format!("{prefix}rangeStart"),
            format!("{range_start} is after rangeEnd {range_end}"),
        ));
    }
    Ok(PoolConfig {
        subnet,
        range_start,
        range_end,
        data_dir,
    })
}

pub(super) fn parse_ipam(v: Option<&Value>) -> Result<Ipam> {
    let o = match v {
        Some(Value::Object(o)) => o,
        None | Some(Value::Null) => {
            return Err(CniError::invalid_config(
                "ipam",
                "is missing; set at least {\"subnet\": \"<this node's pod CIDR>\"}",
            ));
        }
        Some(other) => {
            return Err(CniError::invalid_config(
                "ipam",
                format!("must be an object, got {other}"),
            ))
        }
    };
    match str_field(o, "type", "ipam.type")? {
        None | Some("") | Some("routed-cni") => {}
        Some(plugin) => {
            if plugin.contains('/') || plugin.starts_with('.') {
                return Err(CniError::invalid_config(
                    "ipam.type",
                    format!("{plugin:?} must be a plugin name, not a path"),
                ));
            }
            return Ok(Ipam::Delegated {
                plugin: plugin.to_string(),
            });
        }
    }
    let data_dir = match str_field(o, "dataDir", "ipam.dataDir")? {
        None => PathBuf::from(DEFAULT_DATA_DIR),
        Some(d) if d.starts_with('/') => PathBuf::from(d),
        Some(d) => {
            return Err(CniError::invalid_config(
                "ipam.dataDir",
                format!("{d:?} must be an absolute path"),
            ))
        }
    };
    match (o.get("subnet"), o.get("ranges")) {
        (Some(_), Some(_)) => Err(CniError::invalid_config(
            "ipam",
            "set either \"subnet\" or \"ranges\", not both",
        )),
        (Some(_), None) => Ok(Ipam::Builtin(vec![parse_range(o, "ipam.", data_dir)?])),
        (None, Some(ranges)) => {
            // host-local's shape: a list of range sets, each a list of ranges; one address
            // per set. Dual-stack is one set per family.
            let sets = ranges
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| CniError::invalid_config("ipam.ranges", "must be a non-empty list of range sets, e.g. [[{\"subnet\": \"10.244.1.0/24\"}], [{\"subnet\": \"fd00:10:244:1::/64\"}]]"))?;
            if sets.len() > 2 {
                return Err(CniError::new(
                    Code::UnsupportedField,
                    format!("ipam.ranges has {} range sets; give one per address family (at most one IPv4 and one IPv6)", sets.len()),
                ));
            }
            let mut pools = Vec::new();
            for (i, set) in sets.iter().enumerate() {
                let set = set.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                    CniError::invalid_config(
                        &format!("ipam.ranges[{i}]"),
                        "must be a non-empty list of ranges",
                    )
                })?;
                if set.len() > 1 {
                    return Err(CniError::new(
                        Code::UnsupportedField,
                        format!(
                            "ipam.ranges[{i}] has {} ranges; this version supports one range per set",
                            set.len()
                        ),
                    ));
                }
                let r = set[0].as_object().ok_or_else(|| {
                    CniError::invalid_config(
                        &format!("ipam.ranges[{i}][0]"),
                        "must be an object with \"subnet\"",
                    )
                })?;
                let pool = parse_range(r, &format!("ipam.ranges[{i}][0]."), data_dir.clone())?;
                if pools
                    .iter()
                    .any(|p: &PoolConfig| p.is_ipv6() == pool.is_ipv6())
                {
                    return Err(CniError::new(
                        Code::UnsupportedField,
                        format!(
                            "ipam.ranges has two {} range sets; give at most one per address family",
                            family_name(pool.subnet.ip())
                        ),
                    ));
                }
                pools.push(pool);
            }
            // IPv4 first: results list it first, and stores are always locked in this order.
            pools.sort_by_key(PoolConfig::is_ipv6);
            Ok(Ipam::Builtin(pools))
        }
        (None, None) => Err(CniError::invalid_config(
            "ipam.subnet",
            "is missing; set this node's pod CIDR, e.g. \"10.244.1.0/24\"",
        )),
    }
}
