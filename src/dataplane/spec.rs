//! What ADD builds for one pod, written down once, with the reason for each piece: ADD applies
//! it (commands/add.rs), CHECK walks it and names the first piece that differs
//! (commands/check.rs), doctor walks it and names every one with its fix (doctor/). A piece
//! added here is built, checked and diagnosed; one that is not here is none of those.
//!
//! It also says what the pod's traffic needs from the node's uplinks, which ADD does not build
//! (Place::Uplink, RaUplink; judged in uplink.rs): ADD and CHECK fail naming the fix when an
//! uplink is not so, and doctor reports it.

use std::net::IpAddr;

use super::{Family, Uplink, DEFAULT_MTU, HOST_MAC};

/// Where a sysctl lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The node's end of the pod's veth (`{}` in the key is its name).
    HostVeth,
    /// The node as a whole.
    Node,
    /// The pod's interface, in the pod's namespace (`{}` in the key is its name).
    Pod,
    /// Each of the node's uplinks for the family: the links its default routes leave by, on
    /// which the answers to the pod's traffic come back in (`{}` is its name). ADD does not
    /// write these: they belong to the node's network configuration, and a node may have
    /// cleared them on purpose; ADD and CHECK fail naming the fix, doctor fails them.
    Uplink,
    /// An uplink whose IPv6 default route the kernel learned from router advertisements
    /// (`proto ra`, with accept_ra not 0) and that forwards once ADD has switched forwarding on.
    /// Like `Uplink`, never written by ADD.
    RaUplink,
}

/// Whether the pod's traffic depends on a sysctl once ADD is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Traffic breaks without it: CHECK holds the pod to it, doctor fails it.
    Required,
    /// ADD sets it so the build goes right (or as other plugins leave it); traffic does not
    /// depend on it afterwards: CHECK does not look, doctor warns.
    Setup,
}

/// One sysctl ADD sets, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Sysctl {
    pub family: Family,
    pub place: Place,
    /// The key under /proc/sys, `{}` standing for the interface's name.
    key: &'static str,
    /// The name it goes by in doctor's summary ("proxy_arp").
    pub name: &'static str,
    pub value: &'static str,
    pub need: Need,
    /// Why ADD sets it.
    pub why: &'static str,
    /// What a different value does to the pod, as doctor explains it after `name=value:`.
    pub if_wrong: &'static str,
}

impl Sysctl {
    /// The key under /proc/sys for the interface `ifname` (ignored for node-wide keys).
    pub fn key(&self, ifname: &str) -> String {
        self.key.replace("{}", ifname)
    }

    /// The key as `sysctl` spells it: `net.ipv4.conf.rcni….proxy_arp`. A dot in an interface
    /// name (a VLAN's `eth0.100`) is spelled `/` there, as sysctl(8) reads it.
    pub fn dotted(&self, ifname: &str) -> String {
        self.key
            .replace('/', ".")
            .replace("{}", &ifname.replace('.', "/"))
    }

    /// The command that sets it on the node (wrap it for the pod's namespace).
    pub fn fix(&self, ifname: &str) -> String {
        format!("sysctl -w {}={}", self.dotted(ifname), self.value)
    }
}

/// In the order ADD sets them: the host veth's before the pod end comes up, so the gateway
/// answers (and, IPv6, its address is usable) the moment the pod is.
const SYSCTLS: &[Sysctl] = &[
    Sysctl {
        family: Family::V4,
        place: Place::HostVeth,
        key: "net/ipv4/conf/{}/proxy_arp",
        name: "proxy_arp",
        value: "1",
        need: Need::Required,
        why: "the gateway 169.254.1.1 exists nowhere: the host veth answers the pod's ARP for it",
        if_wrong: "the veth does not answer the pod's ARP for 169.254.1.1",
    },
    Sysctl {
        family: Family::V4,
        place: Place::HostVeth,
        key: "net/ipv4/neigh/{}/proxy_delay",
        name: "proxy_delay",
        value: "0",
        need: Need::Required,
        why: "the kernel otherwise delays proxy ARP replies by up to 0.8 s",
        if_wrong: "the kernel delays proxy ARP replies up to that many jiffies",
    },
    Sysctl {
        family: Family::V4,
        place: Place::HostVeth,
        key: "net/ipv4/conf/{}/forwarding",
        name: "forwarding",
        value: "1",
        need: Need::Required,
        why: "for IPv4 the forwarding flag of the interface a packet arrives on decides whether \
              the node routes it",
        if_wrong: "the node does not route what arrives on the veth",
    },
    Sysctl {
        family: Family::V4,
        place: Place::Node,
        key: "net/ipv4/ip_forward",
        name: "ip_forward",
        value: "1",
        need: Need::Required,
        why: "the node routes between pods and the world",
        if_wrong:
            "the node forwards nothing; writing ip_forward sets the forwarding flag of every \
                   interface, and the flag of the interface a packet arrives on decides",
    },
    Sysctl {
        family: Family::V4,
        place: Place::Uplink,
        key: "net/ipv4/conf/{}/forwarding",
        name: "forwarding",
        value: "1",
        need: Need::Required,
        why: "the answers to the pod's traffic arrive on the uplink, and for IPv4 the forwarding \
              flag of the interface a packet arrives on decides whether the node routes it",
        if_wrong: "the pod's packets leave the node, but the answers arriving on it are dropped \
                   (the forwarding flag of the interface a packet arrives on decides); make it \
                   persistent in the node's network configuration",
    },
    Sysctl {
        family: Family::V6,
        place: Place::HostVeth,
        key: "net/ipv6/conf/{}/disable_ipv6",
        name: "disable_ipv6",
        value: "0",
        need: Need::Required,
        why: "the veth holds the pod's gateway fe80::ecee:eeff:feee:eeee and the route to the \
              pod's /128: a node with IPv6 off by default would have neither",
        if_wrong: "the veth has no IPv6 at all: the kernel drops its fe80::ecee:eeff:feee:eeee \
                   and the pod's /128 route with it",
    },
    Sysctl {
        family: Family::V6,
        place: Place::Node,
        key: "net/ipv6/conf/all/forwarding",
        name: "all.forwarding",
        value: "1",
        need: Need::Required,
        why: "for IPv6 this switch decides forwarding, not the interfaces' own",
        if_wrong: "the node forwards no IPv6 packet: for IPv6 this switch decides, not the \
                   interfaces' own; writing it sets every interface's forwarding too, and an \
                   uplink that learns its default route from router advertisements then needs \
                   accept_ra=2",
    },
    Sysctl {
        family: Family::V6,
        place: Place::RaUplink,
        key: "net/ipv6/conf/{}/accept_ra",
        name: "accept_ra",
        value: "2",
        need: Need::Required,
        why: "a router ignores router advertisements unless accept_ra=2: the node's IPv6 default \
              route, learned from them, is not renewed once the node forwards",
        if_wrong: "the node's IPv6 default route comes from router advertisements, which the \
                   kernel ignores on a forwarding interface unless accept_ra=2; switching \
                   net.ipv6.conf.all.forwarding on removes that route at once, so ADD does not \
                   switch it on here; make it persistent in the node's network configuration",
    },
    Sysctl {
        family: Family::V6,
        place: Place::HostVeth,
        key: "net/ipv6/conf/{}/accept_dad",
        name: "accept_dad",
        value: "0",
        need: Need::Setup,
        why: "no duplicate address detection: the gateway address is usable at once instead of \
              tentative for a second; it matters only while addresses are added",
        if_wrong: "if fe80::ecee:eeff:feee:eeee is added again it is unusable while DAD runs \
                   (ADD adds it nodad)",
    },
    Sysctl {
        family: Family::V6,
        place: Place::HostVeth,
        key: "net/ipv6/conf/{}/proxy_ndp",
        name: "proxy_ndp",
        value: "1",
        need: Need::Setup,
        why: "as calico sets it; the gateway is the veth's own address, answered without proxy \
              entries",
        if_wrong: "ADD sets it as calico does; nothing depends on it while the veth holds \
                   fe80::ecee:eeff:feee:eeee itself",
    },
    Sysctl {
        family: Family::V6,
        place: Place::HostVeth,
        key: "net/ipv6/conf/{}/forwarding",
        name: "forwarding",
        value: "1",
        need: Need::Setup,
        why: "the veth acts as a router (its neighbour advertisements carry the router flag); \
              all.forwarding decides whether packets are forwarded",
        if_wrong: "the veth acts as a host, not a router (its neighbour advertisements lose the \
                   router flag); packets are still forwarded while \
                   net.ipv6.conf.all.forwarding=1",
    },
    Sysctl {
        family: Family::V6,
        place: Place::Pod,
        key: "net/ipv6/conf/{}/disable_ipv6",
        name: "disable_ipv6",
        value: "0",
        need: Need::Required,
        why: "a pod namespace may start with IPv6 off (default.disable_ipv6=1): its interface \
              would then hold no IPv6 address",
        if_wrong: "the pod's interface holds no IPv6 address at all",
    },
    Sysctl {
        family: Family::V6,
        place: Place::Pod,
        key: "net/ipv6/conf/{}/accept_dad",
        name: "accept_dad",
        value: "0",
        need: Need::Setup,
        why: "no duplicate address detection on the pod's side either: an address added again \
              is usable at once (ADD adds the /128 nodad)",
        if_wrong: "an address added again to the pod's interface is unusable while DAD runs",
    },
];

impl Family {
    /// Every sysctl ADD sets for a pod address of this family, in the order it sets them.
    pub fn sysctls(self) -> impl Iterator<Item = &'static Sysctl> {
        SYSCTLS.iter().filter(move |s| s.family == self)
    }

    /// This family's sysctls at `place`.
    pub fn sysctls_at(self, place: Place) -> impl Iterator<Item = &'static Sysctl> {
        self.sysctls().filter(move |s| s.place == place)
    }

    /// The one sysctl of this family at `place` called `name`.
    pub fn sysctl(self, place: Place, name: &str) -> &'static Sysctl {
        self.sysctls_at(place)
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {place:?} sysctl {name} for {}", self.name()))
    }

    /// The node-wide switch that lets the node forward this family at all.
    pub fn forwarding(self) -> &'static Sysctl {
        self.sysctls_at(Place::Node)
            .next()
            .expect("every family has its node forwarding switch")
    }

    /// The address the host veth holds for this family, if any: the IPv6 gateway, so that the
    /// host veth answers the pod's neighbour solicitations for it and has a link-local source
    /// for its own solicitations of the pod.
    pub fn host_veth_address(self) -> Option<Address> {
        match self {
            Family::V4 => None,
            Family::V6 => Some(Address {
                ip: self.gateway(),
                prefix: 64,
                why: "the pod's gateway is the host veth's own link-local address; without it \
                      the node sends no neighbour solicitation for the pod",
            }),
        }
    }
}

/// One end of the veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link<'a> {
    pub name: &'a str,
    /// The MAC it must carry, when the spec fixes one.
    pub mac: Option<[u8; 6]>,
    /// Up once ADD is done.
    pub up: bool,
    pub why: &'static str,
}

/// The MTU of both ends of every veth pair: the network config's, else that of the link the
/// node's IPv4 default route leaves by (`v4_uplinks`, the first), else 1500; so a pod's packets
/// fit the node's way out.
pub fn mtu(configured: Option<u32>, v4_uplinks: &[Uplink]) -> u32 {
    configured
        .or_else(|| v4_uplinks.first().and_then(|u| u.mtu))
        .unwrap_or(DEFAULT_MTU)
}

/// An address on one side of the veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ip: IpAddr,
    pub prefix: u8,
    pub why: &'static str,
}

/// A route on one side of the veth, through that side's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    /// `scope link`: the destination is on the link itself.
    pub scope_link: bool,
    pub why: &'static str,
}

/// The pod's permanent neighbour entry for its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub why: &'static str,
}

/// What ADD builds for one attachment with these addresses (one per family, IPv4 first).
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    /// The node's end of the veth pair (it carries HOST_MAC).
    pub host_veth: &'a str,
    /// The pod's end, in the pod's namespace.
    pub ifname: &'a str,
    pub ips: &'a [IpAddr],
}

impl PodSpec<'_> {
    /// The families of the pod's addresses, IPv4 first, each once.
    pub fn families(&self) -> Vec<Family> {
        Family::ALL
            .into_iter()
            .filter(|f| self.ips.iter().any(|ip| Family::of(*ip) == *f))
            .collect()
    }

    /// The sysctls at `place` for the pod's families, with their keys for this pod.
    pub fn sysctls(&self, place: Place) -> Vec<(&'static Sysctl, String)> {
        let ifname = match place {
            Place::Pod => self.ifname,
            Place::HostVeth | Place::Node => self.host_veth,
            // Not the pod's: they are read per uplink, by Family::uplink_faults.
            Place::Uplink | Place::RaUplink => return Vec::new(),
        };
        self.families()
            .into_iter()
            .flat_map(|f| f.sysctls_at(place))
            .map(|s| (s, s.key(ifname)))
            .collect()
    }

    /// The node's end of the veth pair: named `<prefix>` + 11 hex characters of the attachment's
    /// hash (`host_veth_name`), up, with HOST_MAC.
    pub fn host_link(&self) -> Link<'_> {
        Link {
            name: self.host_veth,
            mac: Some(HOST_MAC),
            up: true,
            why: "every host veth has the same MAC, so the pod's permanent neighbour entry for \
                  its gateway never changes; named after the attachment, so DEL and a retried \
                  ADD find it without any state",
        }
    }

    /// The pod's end: CNI_IFNAME in the pod's namespace, up; its MAC is the kernel's choice,
    /// which ADD's result reports.
    pub fn pod_link(&self) -> Link<'_> {
        Link {
            name: self.ifname,
            mac: None,
            up: true,
            why: "the interface the runtime asked for, born in the pod's namespace, never \
                  visible on the node",
        }
    }

    /// The host veth's own addresses.
    pub fn host_addresses(&self) -> Vec<Address> {
        self.families()
            .into_iter()
            .filter_map(Family::host_veth_address)
            .collect()
    }

    /// The pod's addresses: each one alone on the link (/32, /128), so every packet goes to the
    /// gateway and the node sees it.
    pub fn pod_addresses(&self) -> Vec<Address> {
        self.ips
            .iter()
            .map(|&ip| Address {
                ip,
                prefix: Family::of(ip).host_prefix(),
                why: "the pod's source address, alone on its link so all it sends goes to the \
                      gateway",
            })
            .collect()
    }

    /// The pod's routes, in the order ADD adds them.
    pub fn pod_routes(&self) -> Vec<Route> {
        let mut out = Vec::new();
        if self.families().contains(&Family::V4) {
            out.push(Route {
                dst: Family::V4.gateway(),
                prefix: 32,
                gateway: None,
                scope_link: true,
                why: "the pod's /32 puts 169.254.1.1 on no link: a route via it needs one that \
                      says it is on the pod's interface",
            });
        }
        for f in self.families() {
            out.push(Route {
                dst: match f {
                    Family::V4 => std::net::Ipv4Addr::UNSPECIFIED.into(),
                    Family::V6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
                },
                prefix: 0,
                gateway: Some(f.gateway()),
                scope_link: false,
                why: "everything off the pod goes to the node",
            });
        }
        out
    }

    /// The pod's permanent entries for its gateways: it never has to resolve them.
    pub fn pod_neighbours(&self) -> Vec<Neighbour> {
        self.families()
            .into_iter()
            .map(|f| Neighbour {
                ip: f.gateway(),
                mac: HOST_MAC,
                why: "the gateway's MAC is the host veth's, always the same: the pod never waits \
                      on ARP or neighbour discovery for it",
            })
            .collect()
    }

    /// The node's routes to the pod: `<ip>/32 dev <host veth> scope link` (`/128` for IPv6),
    /// so replies reach it.
    pub fn host_routes(&self) -> Vec<Route> {
        self.ips
            .iter()
            .map(|&ip| {
                let f = Family::of(ip);
                Route {
                    dst: ip,
                    prefix: f.host_prefix(),
                    gateway: None,
                    scope_link: f == Family::V4,
                    why: "replies to the pod leave through its veth",
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{GATEWAY, GATEWAY6};

    fn names(f: Family, place: Place, need: Need) -> Vec<&'static str> {
        f.sysctls_at(place)
            .filter(|s| s.need == need)
            .map(|s| s.name)
            .collect()
    }

    #[test]
    fn ipv4_sets_proxy_arp_and_forwarding_and_needs_them_all() {
        assert_eq!(
            names(Family::V4, Place::HostVeth, Need::Required),
            ["proxy_arp", "proxy_delay", "forwarding"]
        );
        assert!(names(Family::V4, Place::HostVeth, Need::Setup).is_empty());
        assert_eq!(Family::V4.forwarding().key("x"), "net/ipv4/ip_forward");
        assert_eq!(Family::V4.sysctls_at(Place::Pod).count(), 0);
    }

    #[test]
    fn ipv6_requires_only_what_its_traffic_needs() {
        // CHECK holds an IPv6 pod to these and doctor fails them ...
        assert_eq!(
            names(Family::V6, Place::HostVeth, Need::Required),
            ["disable_ipv6"]
        );
        assert_eq!(
            Family::V6.forwarding().key("x"),
            "net/ipv6/conf/all/forwarding"
        );
        assert_eq!(
            names(Family::V6, Place::Pod, Need::Required),
            ["disable_ipv6"]
        );
        // ... and only warns about these, which ADD sets for the build or by convention.
        assert_eq!(
            names(Family::V6, Place::HostVeth, Need::Setup),
            ["accept_dad", "proxy_ndp", "forwarding"]
        );
        assert_eq!(names(Family::V6, Place::Pod, Need::Setup), ["accept_dad"]);
    }

    #[test]
    fn keys_name_the_interface_and_fixes_spell_them_as_sysctl_does() {
        let s = Family::V4.sysctl(Place::HostVeth, "proxy_delay");
        assert_eq!(s.key("rcni0123"), "net/ipv4/neigh/rcni0123/proxy_delay");
        assert_eq!(
            s.fix("rcni0123"),
            "sysctl -w net.ipv4.neigh.rcni0123.proxy_delay=0"
        );
        // Every per-interface key has a place for the name; node-wide ones do not.
        for s in SYSCTLS {
            assert_eq!(s.key.contains("{}"), s.place != Place::Node, "{s:?}");
            assert_eq!(s.key.contains("ipv6"), s.family.is_v6(), "{s:?}");
        }
    }

    #[test]
    fn texts_name_the_gateways_the_constants_hold() {
        for s in SYSCTLS {
            let other = match s.family {
                Family::V4 => GATEWAY6.to_string(),
                Family::V6 => GATEWAY.to_string(),
            };
            assert!(
                !s.why.contains(&other) && !s.if_wrong.contains(&other),
                "{s:?}"
            );
        }
        assert!(Family::V4
            .sysctl(Place::HostVeth, "proxy_arp")
            .if_wrong
            .contains(&GATEWAY.to_string()));
        assert!(Family::V6
            .sysctl(Place::HostVeth, "disable_ipv6")
            .if_wrong
            .contains(&GATEWAY6.to_string()));
    }

    #[test]
    fn the_veth_pair_is_up_the_node_end_with_the_fixed_mac_and_mtu_follows_the_uplink() {
        let spec = PodSpec {
            host_veth: "rcniabc",
            ifname: "eth0",
            ips: &[],
        };
        let (host, pod) = (spec.host_link(), spec.pod_link());
        assert_eq!(
            (host.name, host.mac, host.up),
            ("rcniabc", Some(HOST_MAC), true)
        );
        assert_eq!((pod.name, pod.mac, pod.up), ("eth0", None, true));
        let up = Uplink {
            name: "eth0".into(),
            index: 2,
            mtu: Some(9000),
            ra_default: false,
        };
        assert_eq!(mtu(Some(1400), std::slice::from_ref(&up)), 1400);
        assert_eq!(mtu(None, &[up]), 9000);
        assert_eq!(mtu(None, &[]), DEFAULT_MTU);
    }

    #[test]
    fn a_dual_stack_pod_gets_both_families_ipv4_first() {
        let ips: Vec<IpAddr> = vec!["fd00::5".parse().unwrap(), "10.0.0.5".parse().unwrap()];
        let spec = PodSpec {
            host_veth: "rcniabc",
            ifname: "eth0",
            ips: &ips,
        };
        assert_eq!(spec.families(), [Family::V4, Family::V6]);
        let host: Vec<String> = spec
            .sysctls(Place::HostVeth)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        assert!(host.contains(&"net/ipv4/conf/rcniabc/proxy_arp".to_string()));
        assert!(host.contains(&"net/ipv6/conf/rcniabc/proxy_ndp".to_string()));
        let pod: Vec<String> = spec
            .sysctls(Place::Pod)
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        assert_eq!(
            pod,
            [
                "net/ipv6/conf/eth0/disable_ipv6",
                "net/ipv6/conf/eth0/accept_dad"
            ]
        );
        assert_eq!(
            spec.host_addresses(),
            [Family::V6.host_veth_address().unwrap()]
        );
        let routes = spec.pod_routes();
        // The gateway's link route comes before the default route that needs it.
        assert_eq!(routes[0].dst, IpAddr::V4(GATEWAY));
        assert!(routes[0].scope_link);
        assert_eq!(
            routes[1..].iter().map(|r| r.gateway).collect::<Vec<_>>(),
            [Some(IpAddr::V4(GATEWAY)), Some(IpAddr::V6(GATEWAY6))]
        );
        let host_routes = spec.host_routes();
        assert_eq!(
            host_routes.iter().map(|r| r.prefix).collect::<Vec<_>>(),
            [128, 32]
        );
        assert_eq!(spec.pod_neighbours().len(), 2);
    }

    #[test]
    fn an_ipv4_pod_gets_nothing_of_ipv6() {
        let ips: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
        let spec = PodSpec {
            host_veth: "rcniabc",
            ifname: "eth0",
            ips: &ips,
        };
        assert!(spec.host_addresses().is_empty());
        assert!(spec.sysctls(Place::Pod).is_empty());
        assert!(spec
            .sysctls(Place::HostVeth)
            .iter()
            .all(|(s, _)| s.family == Family::V4));
        assert_eq!(spec.pod_routes().len(), 2);
    }
}
