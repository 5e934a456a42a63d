//! Protocol documents: results, errors and VERSION replies, printed in the config's cniVersion.

use serde::Serialize;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

use super::error::CniError;

/// Every cniVersion this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version we answer in when the config did not tell us one we know.
pub const LATEST_VERSION: &str = "1.1.0";

/// A parsed `major.minor.patch` version, comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }

    pub fn is_supported(s: &str) -> bool {
        SUPPORTED_VERSIONS.contains(&s)
    }

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn has_ip_version_field(self) -> bool {
        self < Version(1, 0, 0)
    }

    /// CHECK exists since 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Version(0, 4, 0)
    }

    /// GC and STATUS exist since 1.1.0, as do interface `mtu` and extra route fields.
    pub fn is_1_1(self) -> bool {
        self >= Version(1, 1, 0)
    }
}

/// One entry of `interfaces` in a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// The netns path as the runtime gave it; `None` for host interfaces.
    pub sandbox: Option<String>,
}

/// One entry of `ips` in a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: String,
    pub gw: Option<IpAddr>,
}

/// The `dns` section, passed from config to result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// What ADD reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl AddResult {
    /// The result document in the shape of `version` (one of SUPPORTED_VERSIONS).
    pub fn to_json(&self, version: &str) -> Value {
        let v = Version::parse(version).unwrap_or(Version(1, 1, 0));
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                o.insert("mac".into(), json!(i.mac));
                if let (true, Some(mtu)) = (v.is_1_1(), i.mtu) {
                    o.insert("mtu".into(), json!(mtu));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if v.has_ip_version_field() {
                    let family = if ip.address.is_ipv4() { "4" } else { "6" };
                    o.insert("version".into(), json!(family));
                }
                if let Some(idx) = ip.interface {
                    o.insert("interface".into(), json!(idx));
                }
                o.insert(
                    "address".into(),
                    json!(format!("{}/{}", ip.address, ip.prefix)),
                );
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        json!({
            "cniVersion": version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns,
        })
    }
}

/// The error document a runtime reads from stdout.
pub fn error_json(version: &str, err: &CniError) -> Value {
    let mut o = Map::new();
    o.insert("cniVersion".into(), json!(version));
    o.insert("code".into(), json!(err.code.as_u32()));
    o.insert("msg".into(), json!(err.msg));
    if !err.details.is_empty() {
        o.insert("details".into(), json!(err.details));
    }
    Value::Object(o)
}

/// The VERSION reply. It answers in the version asked about when we know it.
pub fn version_json(asked: Option<&str>) -> Value {
    let version = match asked {
        Some(v) if Version::parse(v).is_some() => v,
        _ => LATEST_VERSION,
    };
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::error::Code;

    fn sample() -> AddResult {
        AddResult {
            interfaces: vec![
                Interface {
                    name: "rcni0123456789a".into(),
                    mac: "ee:ee:ee:ee:ee:ee".into(),
                    mtu: Some(1500),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:05".into(),
                    mtu: Some(1500),
                    sandbox: Some("/run/netns/cni-1234".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.5".parse().unwrap(),
                prefix: 32,
                gateway: Some("169.254.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("169.254.1.1".parse().unwrap()),
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                search: vec!["svc.cluster.local".into()],
                ..Dns::default()
            },
        }
    }

    #[test]
    fn golden_result_1_1_0_carries_mtu_and_no_ip_version() {
        let got = sample().to_json("1.1.0");
        let want: Value = serde_json::from_str(
            r#"{"cniVersion":"1.1.0",
                "interfaces":[{"name":"rcni0123456789a","mac":"ee:ee:ee:ee:ee:ee","mtu":1500},
                              {"name":"eth0","mac":"0a:58:0a:f4:01:05","mtu":1500,"sandbox":"/run/netns/cni-1234"}],
                "ips":[{"address":"10.244.1.5/32","gateway":"169.254.1.1","interface":1}],
                "routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],
                "dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]}}"#,
        )
        .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn golden_result_1_0_0_has_no_mtu() {
        let got = sample().to_json("1.0.0");
        let want: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0",
                "interfaces":[{"name":"rcni0123456789a","mac":"ee:ee:ee:ee:ee:ee"},
                              {"name":"eth0","mac":"0a:58:0a:f4:01:05","sandbox":"/run/netns/cni-1234"}],
                "ips":[{"address":"10.244.1.5/32","gateway":"169.254.1.1","interface":1}],
                "routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],
                "dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]}}"#,
        )
        .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn golden_results_before_1_0_carry_ip_version() {
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let got = sample().to_json(v);
            let want: Value = serde_json::from_str(&format!(
                r#"{{"cniVersion":"{v}",
                "interfaces":[{{"name":"rcni0123456789a","mac":"ee:ee:ee:ee:ee:ee"}},
                              {{"name":"eth0","mac":"0a:58:0a:f4:01:05","sandbox":"/run/netns/cni-1234"}}],
                "ips":[{{"version":"4","address":"10.244.1.5/32","gateway":"169.254.1.1","interface":1}}],
                "routes":[{{"dst":"0.0.0.0/0","gw":"169.254.1.1"}}],
                "dns":{{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]}}}}"#
            ))
            .unwrap();
            assert_eq!(got, want, "version {v}");
        }
    }

    #[test]
    fn golden_dual_stack_results_list_both_families() {
        let mut r = sample();
        r.ips.push(IpConfig {
            address: "fd00:10:244:1::5".parse().unwrap(),
            prefix: 128,
            gateway: Some("fe80::ecee:eeff:feee:eeee".parse().unwrap()),
            interface: Some(1),
        });
        r.routes.push(Route {
            dst: "::/0".into(),
            gw: Some("fe80::ecee:eeff:feee:eeee".parse().unwrap()),
        });
        let old = r.to_json("0.3.1");
        assert_eq!(
            old["ips"],
            json!([{"version":"4","address":"10.244.1.5/32","gateway":"169.254.1.1","interface":1},
                   {"version":"6","address":"fd00:10:244:1::5/128","gateway":"fe80::ecee:eeff:feee:eeee","interface":1}])
        );
        for v in ["1.0.0", "1.1.0"] {
            let new = r.to_json(v);
            assert_eq!(
                new["ips"][1],
                json!({"address":"fd00:10:244:1::5/128","gateway":"fe80::ecee:eeff:feee:eeee","interface":1})
            );
            assert_eq!(
                new["routes"],
                json!([{"dst":"0.0.0.0/0","gw":"169.254.1.1"},{"dst":"::/0","gw":"fe80::ecee:eeff:feee:eeee"}])
            );
        }
    }

    #[test]
    fn empty_dns_is_an_empty_object() {
        let mut r = sample();
        r.dns = Dns::default();
        assert_eq!(r.to_json("1.0.0")["dns"], json!({}));
    }

    #[test]
    fn golden_error_and_version() {
        let e = CniError::new(Code::InvalidEnv, "CNI_IFNAME is missing").with_details("set it");
        assert_eq!(
            error_json("1.0.0", &e),
            json!({"cniVersion":"1.0.0","code":4,"msg":"CNI_IFNAME is missing","details":"set it"})
        );
        let e = CniError::new(Code::Decode, "bad");
        assert_eq!(
            error_json("0.3.1", &e),
            json!({"cniVersion":"0.3.1","code":6,"msg":"bad"})
        );
        assert_eq!(
            version_json(Some("0.4.0")),
            json!({"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
        );
        assert_eq!(version_json(Some("garbage"))["cniVersion"], json!("1.1.0"));
    }

    #[test]
    fn versions_compare() {
        assert!(Version::parse("0.3.1").unwrap().has_ip_version_field());
        assert!(!Version::parse("1.0.0").unwrap().has_ip_version_field());
        assert!(Version::parse("0.4.0").unwrap().has_check());
        assert!(!Version::parse("0.3.1").unwrap().has_check());
        assert!(Version::parse("1.1.0").unwrap().is_1_1());
        assert_eq!(Version::parse("1.1"), None);
        assert_eq!(Version::parse("1.1.0.0"), None);
        assert!(!Version::is_supported("0.2.0"));
    }
}
