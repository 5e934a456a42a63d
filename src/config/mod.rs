//! The plugin's network configuration: parsed from stdin JSON and validated, each problem named
//! by its key and value (code 7), unknown keys ignored as CNI requires.
//!
//! Here: decoding stdin, the version check and the top-level keys; `ipam` parses the `ipam`
//! section (pools or a delegated plugin); `veth_prefix` what `hostVethPrefix` may be; `fuzz`
//! throws hostile documents at both.

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use crate::cni::error::{CniError, Code, Result};
use crate::cni::types::{Dns, Version, SUPPORTED_VERSIONS};
use crate::log::Level;

mod ipam;
mod veth_prefix;
use ipam::{parse_ipam, parse_subnet};
pub use ipam::{Ipam, PoolConfig};

pub const DEFAULT_DATA_DIR: &str = "/run/routed-cni";
pub const DEFAULT_HOST_VETH_PREFIX: &str = "rcni";
/// The largest config we accept on stdin; real ones are a few KiB.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

/// An address as a number, for range arithmetic over both families.
pub fn addr_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address `n` of the family `like` belongs to (`n` must fit that family).
pub fn addr_from_u128(like: IpAddr, n: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// The family's name as the CNI result spells it before 1.0.0, and as messages say it.
pub fn family_name(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub ipam: Ipam,
    pub masquerade: bool,
    /// Which iptables backend gets the pool's rules (`iptablesBackend`).
    pub iptables_backend: IptablesBackend,
    pub non_masquerade_cidrs: Vec<IpNetwork>,
    pub mtu: Option<u32>,
    pub host_veth_prefix: String,
    /// The plugin's own state outside any IPAM store: the records of delegated attachments
    /// and their lock (`ipam.dataDir` belongs to the IPAM plugin when one is delegated to).
    pub data_dir: PathBuf,
    pub log_file: Option<PathBuf>,
    pub log_level: Level,
    pub dns: Dns,
    pub prev_result: Option<Value>,
    /// The document as received, for delegated plugins.
    pub raw: Value,
}

/// `iptablesBackend`: where the forward and masquerade rules go. `Auto` detects the backend
/// the node uses (both when both carry rules); the others force one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IptablesBackend {
    #[default]
    Auto,
    Nft,
    Legacy,
}

impl IptablesBackend {
    pub const CHOICES: [&'static str; 3] = ["auto", "nft", "legacy"];

    fn parse(s: &str) -> Option<IptablesBackend> {
        match s {
            "auto" => Some(IptablesBackend::Auto),
            "nft" => Some(IptablesBackend::Nft),
            "legacy" => Some(IptablesBackend::Legacy),
            _ => None,
        }
    }
}

impl NetConf {
    pub fn version(&self) -> Version {
        Version::parse(&self.cni_version).expect("validated at parse time")
    }
}

/// Parses stdin bytes into JSON: code 6 when it is not a JSON object.
pub fn parse_json(bytes: &[u8]) -> Result<Value> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(CniError::new(
            Code::Decode,
            format!(
                "network config on stdin is {} bytes; at most {MAX_CONFIG_BYTES} are accepted",
                bytes.len()
            ),
        ));
    }
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(CniError::new(
            Code::Decode,
            "no network config on stdin: the runtime must pass the plugin's JSON config",
        ));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            Code::Decode,
            format!("network config on stdin is not valid JSON: {e}"),
        )
    })?;
    if !v.is_object() {
        return Err(CniError::new(
            Code::Decode,
            "network config on stdin must be a JSON object",
        ));
    }
    Ok(v)
}

/// The `cniVersion` of a config, if it has a usable one: for choosing the error's version.
pub fn declared_version(v: &Value) -> Option<&str> {
    v.get("cniVersion")
        .and_then(Value::as_str)
        .filter(|s| Version::is_supported(s))
}

/// Checks the config's `cniVersion` against ours (code 1 when we do not speak it).
pub fn check_version(v: &Value) -> Result<String> {
    match v.get("cniVersion") {
        Some(Value::String(s)) if Version::is_supported(s) => Ok(s.clone()),
        Some(Value::String(s)) => Err(CniError::new(
            Code::IncompatibleVersion,
            format!("cniVersion {s:?} is not supported; this plugin speaks {}", SUPPORTED_VERSIONS.join(", ")),
        )),
        None => Err(CniError::new(
            Code::IncompatibleVersion,
            format!("config has no cniVersion (that means 0.1.0, which is not supported); set one of {}", SUPPORTED_VERSIONS.join(", ")),
        )),
        Some(other) => Err(CniError::invalid_config("cniVersion", format!("must be a string, got {other}"))),
    }
}

pub(super) fn str_field<'a>(
    o: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(CniError::invalid_config(
            path,
            format!("must be a string, got {other}"),
        )),
    }
}

/// Parses and validates a plugin config that already passed `check_version`.
pub fn parse(v: Value) -> Result<NetConf> {
    let cni_version = check_version(&v)?;
    let o = v.as_object().expect("parse_json only returns objects");
    let name = str_field(o, "name", "name")?
        .unwrap_or_default()
        .to_string();
    if name.contains('/') || name.contains('\0') {
        return Err(CniError::invalid_config(
            "name",
            format!("{name:?} must not contain '/' or NUL"),
        ));
    }
    let ipam = parse_ipam(o.get("ipam"))?;
    let masquerade = match (o.get("masquerade"), o.get("ipMasq")) {
        (Some(Value::Bool(b)), _) => *b,
        (Some(other), _) => {
            return Err(CniError::invalid_config(
                "masquerade",
                format!("must be true or false, got {other}"),
            ))
        }
        (None, Some(Value::Bool(b))) => *b,
        (None, Some(other)) => {
            return Err(CniError::invalid_config(
                "ipMasq",
                format!("must be true or false, got {other}"),
            ))
        }
        (None, None) => true,
    };
    let iptables_backend = match str_field(o, "iptablesBackend", "iptablesBackend")? {
        None => IptablesBackend::Auto,
        Some(s) => IptablesBackend::parse(s).ok_or_else(|| {
            CniError::invalid_config(
                "iptablesBackend",
                format!(
                    "{s:?} is not one of {}",
                    IptablesBackend::CHOICES
                        .map(|c| format!("{c:?}"))
                        .join(", ")
                ),
            )
        })?,
    };
    let non_masquerade_cidrs = match o.get("nonMasqueradeCIDRs") {
        None | Some(Value::Null) => match &ipam {
            Ipam::Builtin(pools) => pools.iter().map(|p| p.subnet).collect(),
            Ipam::Delegated { .. } => Vec::new(),
        },
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let path = format!("nonMasqueradeCIDRs[{i}]");
                let s = item.as_str().ok_or_else(|| {
                    CniError::invalid_config(&path, format!("must be a CIDR string, got {item}"))
                })?;
                parse_subnet(s, &path)
            })
            .collect::<Result<Vec<_>>>()?,
        Some(other) => {
            return Err(CniError::invalid_config(
                "nonMasqueradeCIDRs",
                format!("must be a list of CIDRs, got {other}"),
            ))
        }
    };
    let mtu = match o.get("mtu") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(m) if (68..=65535).contains(&m) => Some(m as u32),
            _ => {
                return Err(CniError::invalid_config(
                    "mtu",
                    format!(
                        "{n} is out of range; use 68..65535 (or leave it out to follow the uplink)"
                    ),
                ))
            }
        },
        Some(other) => {
            return Err(CniError::invalid_config(
                "mtu",
                format!("must be a number, got {other}"),
            ))
        }
    };
    let host_veth_prefix = str_field(o, "hostVethPrefix", "hostVethPrefix")?
        .unwrap_or(DEFAULT_HOST_VETH_PREFIX)
        .to_string();
    veth_prefix::check(&host_veth_prefix)?;
    let data_dir = match str_field(o, "dataDir", "dataDir")? {
        // Beside the built-in store when its dataDir is set: one directory holds all the
        // plugin's state on the node (and a test's scratch store keeps a test's state).
        None | Some("") => match &ipam {
            Ipam::Builtin(pools) => pools
                .first()
                .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), |p| p.data_dir.clone()),
            Ipam::Delegated { .. } => PathBuf::from(DEFAULT_DATA_DIR),
        },
        Some(d) if d.starts_with('/') => PathBuf::from(d),
        Some(d) => {
            return Err(CniError::invalid_config(
                "dataDir",
                format!("{d:?} must be an absolute path"),
            ))
        }
    };
    let log_file = match str_field(o, "logFile", "logFile")? {
        None | Some("") => None,
        Some(p) if p.starts_with('/') => Some(PathBuf::from(p)),
        Some(p) => {
            return Err(CniError::invalid_config(
                "logFile",
                format!("{p:?} must be an absolute path"),
            ))
        }
    };
    let log_level = match str_field(o, "logLevel", "logLevel")? {
        None => Level::Info,
        Some(s) => Level::parse(s).ok_or_else(|| {
            CniError::invalid_config(
                "logLevel",
                format!("{s:?} is not one of error, warn, info, debug"),
            )
        })?,
    };
    let dns = match o.get("dns") {
        None | Some(Value::Null) => Dns::default(),
        Some(d) => serde_json::from_value(d.clone())
            .map_err(|e| CniError::invalid_config("dns", format!("{e}; expected {{\"nameservers\": [..], \"search\": [..], \"domain\": .., \"options\": [..]}}")))?,
    };
    let prev_result = o.get("prevResult").filter(|p| !p.is_null()).cloned();
    Ok(NetConf {
        cni_version,
        name,
        ipam,
        masquerade,
        iptables_backend,
        non_masquerade_cidrs,
        mtu,
        host_veth_prefix,
        data_dir,
        log_file,
        log_level,
        dns,
        prev_result,
        raw: v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(v: Value) -> Result<NetConf> {
        parse(v)
    }

    fn base() -> Value {
        json!({"cniVersion":"1.0.0","name":"k8s","type":"routed-cni","ipam":{"subnet":"10.244.1.0/24"}})
    }

    fn err_with(v: Value) -> CniError {
        conf(v).expect_err("config should be rejected")
    }

    #[test]
    fn defaults() {
        let c = conf(base()).unwrap();
        let Ipam::Builtin(pools) = &c.ipam else {
            panic!()
        };
        let p = &pools[0];
        assert_eq!(pools.len(), 1);
        assert_eq!(p.range_start, IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(p.range_end, IpAddr::V4(Ipv4Addr::new(10, 244, 1, 254)));
        assert_eq!(p.size(), 254);
        assert_eq!(p.data_dir, PathBuf::from("/run/routed-cni"));
        assert!(c.masquerade);
        assert_eq!(
            c.non_masquerade_cidrs,
            vec!["10.244.1.0/24".parse::<IpNetwork>().unwrap()]
        );
        assert_eq!(c.host_veth_prefix, "rcni");
        assert_eq!(c.data_dir, PathBuf::from("/run/routed-cni"));
        assert_eq!(c.iptables_backend, IptablesBackend::Auto);
        assert_eq!(c.mtu, None);
        assert_eq!(c.log_level, Level::Info);
        let mut v = base();
        v["dataDir"] = json!("/var/lib/rcni");
        assert_eq!(
            conf(v.clone()).unwrap().data_dir,
            PathBuf::from("/var/lib/rcni")
        );
        v["dataDir"] = json!("rel");
        assert!(err_with(v).msg.contains("dataDir"));
    }

    #[test]
    fn full_config_from_the_design() {
        let c = conf(json!({
            "cniVersion":"0.3.1","name":"k8s","type":"routed-cni",
            "ipam":{"subnet":"10.244.1.0/24","rangeStart":"10.244.1.10","rangeEnd":"10.244.1.250","dataDir":"/var/lib/rcni"},
            "masquerade":false,"nonMasqueradeCIDRs":["10.244.0.0/16","10.96.0.0/12"],"mtu":1450,
            "hostVethPrefix":"pnet","logFile":"/var/log/routed-cni.log","logLevel":"debug",
            "iptablesBackend":"legacy",
            "dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]},
            "someUnknownKey":{"x":1},"runtimeConfig":{},"args":{"cni":{}}
        }))
        .unwrap();
        let Ipam::Builtin(pools) = &c.ipam else {
            panic!()
        };
        let p = &pools[0];
        assert_eq!(p.size(), 241);
        assert_eq!(p.data_dir, PathBuf::from("/var/lib/rcni"));
        assert!(!c.masquerade);
        assert_eq!(c.non_masquerade_cidrs.len(), 2);
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(c.host_veth_prefix, "pnet");
        assert_eq!(c.iptables_backend, IptablesBackend::Legacy);
        assert_eq!(c.log_level, Level::Debug);
        assert_eq!(c.dns.nameservers, vec!["10.96.0.10"]);
    }

    #[test]
    fn host_local_ranges_shape() {
        let mut v = base();
        v["ipam"] = json!({"type":"routed-cni","ranges":[[{"subnet":"10.10.0.0/16","rangeStart":"10.10.1.1","rangeEnd":"10.10.1.2"}]]});
        let c = conf(v).unwrap();
        let Ipam::Builtin(pools) = &c.ipam else {
            panic!()
        };
        let p = &pools[0];
        assert_eq!(p.subnet.to_string(), "10.10.0.0/16");
        assert_eq!(p.size(), 2);
    }

    #[test]
    fn delegated_ipam() {
        let mut v = base();
        v["ipam"] = json!({"type":"host-local","subnet":"10.1.0.0/24"});
        let c = conf(v).unwrap();
        assert_eq!(
            c.ipam,
            Ipam::Delegated {
                plugin: "host-local".into()
            }
        );
        let mut v = base();
        v["ipam"] = json!({"type":"../../bin/sh"});
        assert_eq!(err_with(v).code, Code::InvalidConfig);
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (
                json!({"subnet":"10.244.1.0/33"}),
                "ipam.subnet",
                "10.244.1.0/33",
            ),
            (json!({"subnet":"banana"}), "ipam.subnet", "banana"),
            (
                json!({"subnet":"10.244.1.7/24"}),
                "ipam.subnet",
                "host bits",
            ),
            (
                json!({"subnet":"10.244.1.0/31"}),
                "ipam.subnet",
                "too small",
            ),
            (json!({"subnet":42}), "ipam.subnet", "42"),
            (
                json!({"subnet":"10.244.1.0/24","rangeStart":"10.244.2.5"}),
                "ipam.rangeStart",
                "outside",
            ),
            (
                json!({"subnet":"10.244.1.0/24","rangeEnd":"10.244.1.255"}),
                "ipam.rangeEnd",
                "broadcast",
            ),
            (
                json!({"subnet":"10.244.1.0/24","rangeStart":"10.244.1.9","rangeEnd":"10.244.1.8"}),
                "ipam.rangeStart",
                "after",
            ),
            (
                json!({"subnet":"10.244.1.0/24","dataDir":"relative/dir"}),
                "ipam.dataDir",
                "absolute",
            ),
            (json!({}), "ipam.subnet", "missing"),
        ];
        for (ipam, key, needle) in cases {
            let mut v = base();
            v["ipam"] = ipam.clone();
            let e = err_with(v);
            assert_eq!(e.code, Code::InvalidConfig, "{ipam}");
            assert!(
                e.msg.contains(key) && e.msg.contains(needle),
                "{ipam}: {}",
                e.msg
            );
        }
        let top: Vec<(&str, Value, &str)> = vec![
            ("mtu", json!("big"), "mtu"),
            ("mtu", json!(10), "mtu"),
            ("masquerade", json!("yes"), "masquerade"),
            (
                "nonMasqueradeCIDRs",
                json!(["10.0.0.0/8", "x"]),
                "nonMasqueradeCIDRs[1]",
            ),
            ("hostVethPrefix", json!("toolong"), "hostVethPrefix"),
            ("hostVethPrefix", json!("a/b"), "hostVethPrefix"),
            ("logLevel", json!("loud"), "logLevel"),
            (
                "iptablesBackend",
                json!("nftables"),
                "\"auto\", \"nft\", \"legacy\"",
            ),
            ("iptablesBackend", json!(true), "iptablesBackend"),
            ("logFile", json!("rel.log"), "logFile"),
            ("dns", json!({"nameservers":"x"}), "dns"),
            ("name", json!("a/b"), "name"),
            ("ipam", json!("x"), "ipam"),
        ];
        for (key, val, needle) in top {
            let mut v = base();
            v[key] = val.clone();
            let e = err_with(v);
            assert_eq!(e.code, Code::InvalidConfig, "{key}={val}");
            assert!(e.msg.contains(needle), "{key}={val}: {}", e.msg);
        }
    }

    #[test]
    fn host_veth_prefixes_that_overlap_interface_names_are_refused() {
        for bad in [
            "eth", "e", "en", "enp", "wl", "cali", "veth", "v", "lo", "ETH", "br", "cni",
        ] {
            let mut v = base();
            v["hostVethPrefix"] = json!(bad);
            let e = err_with(v);
            assert_eq!(e.code, Code::InvalidConfig, "{bad}");
            assert!(
                e.msg.contains("hostVethPrefix") && e.msg.contains("\"rcni\""),
                "{bad}: {}",
                e.msg
            );
        }
        for good in ["rcni", "pnet", "rc", "r0"] {
            let mut v = base();
            v["hostVethPrefix"] = json!(good);
            assert_eq!(conf(v).unwrap().host_veth_prefix, good);
        }
    }

    #[test]
    fn versions_and_decoding() {
        assert_eq!(parse_json(b"not json").unwrap_err().code, Code::Decode);
        assert_eq!(parse_json(b"").unwrap_err().code, Code::Decode);
        assert_eq!(parse_json(b"[1,2]").unwrap_err().code, Code::Decode);
        assert_eq!(
            parse_json(&vec![b' '; MAX_CONFIG_BYTES + 1])
                .unwrap_err()
                .code,
            Code::Decode
        );
        let mut v = base();
        v["cniVersion"] = json!("0.2.0");
        assert_eq!(err_with(v).code, Code::IncompatibleVersion);
        let mut v = base();
        v.as_object_mut().unwrap().remove("cniVersion");
        assert_eq!(err_with(v).code, Code::IncompatibleVersion);
        for ver in SUPPORTED_VERSIONS {
            let mut v = base();
            v["cniVersion"] = json!(ver);
            assert_eq!(conf(v).unwrap().cni_version, *ver);
        }
    }

    #[test]
    fn unsupported_multi_range() {
        let mut v = base();
        v["ipam"] = json!({"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/24"}]]});
        let e = err_with(v);
        assert_eq!(e.code, Code::UnsupportedField);
        assert!(e.msg.contains("two IPv4 range sets"), "{}", e.msg);
        let mut v = base();
        v["ipam"] = json!({"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}],[{"subnet":"10.3.0.0/24"}]]});
        assert_eq!(err_with(v).code, Code::UnsupportedField);
    }

    #[test]
    fn dual_stack_and_ipv6_only_pools() {
        let mut v = base();
        // IPv6 listed first: pools still come out IPv4 first (lock order, result order).
        v["ipam"] =
            json!({"ranges":[[{"subnet":"fd00:10:244:1::/64"}],[{"subnet":"10.244.1.0/24"}]]});
        let c = conf(v).unwrap();
        let Ipam::Builtin(pools) = &c.ipam else {
            panic!()
        };
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].subnet.to_string(), "10.244.1.0/24");
        assert_eq!(pools[1].range_start.to_string(), "fd00:10:244:1::1");
        assert_eq!(
            pools[1].range_end.to_string(),
            "fd00:10:244:1:ffff:ffff:ffff:fffe"
        );
        assert_eq!(pools[1].size(), (1u128 << 64) - 2);
        assert_eq!(pools[1].host_prefix(), 128);
        assert_eq!(c.non_masquerade_cidrs.len(), 2);

        let mut v = base();
        v["ipam"] = json!({"subnet":"fd00:10:244:2::/120","rangeStart":"fd00:10:244:2::10","rangeEnd":"fd00:10:244:2::1f"});
        let c = conf(v).unwrap();
        let Ipam::Builtin(pools) = &c.ipam else {
            panic!()
        };
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].size(), 16);
        assert!(pools[0].in_range("fd00:10:244:2::1f".parse().unwrap()));
        assert!(!pools[0].in_range("fd00:10:244:2::20".parse().unwrap()));
        assert!(!pools[0].in_range("10.0.0.1".parse().unwrap()));

        for (ipam, needle) in [
            (json!({"subnet":"fd00::/127"}), "too small"),
            (json!({"subnet":"fd00::1/64"}), "host bits"),
            (
                json!({"subnet":"fd00::/64","rangeStart":"10.0.0.1"}),
                "outside",
            ),
            (
                json!({"subnet":"fd00::/64","rangeEnd":"fd00::"}),
                "first (network)",
            ),
        ] {
            let mut v = base();
            v["ipam"] = ipam.clone();
            let e = err_with(v);
            assert_eq!(e.code, Code::InvalidConfig, "{ipam}");
            assert!(e.msg.contains(needle), "{ipam}: {}", e.msg);
        }
    }
}

#[cfg(test)]
mod fuzz;
