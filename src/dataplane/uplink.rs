//! The node's uplinks (the links its default routes leave by) and what forwarding needs of
//! them: the spec's Place::Uplink and Place::RaUplink entries, judged the same way for ADD
//! (before it writes anything), CHECK and doctor.

use rtnetlink::packet_route::route::{RouteAttribute, RouteProtocol};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::spec::{Place, Sysctl};
use super::{link_mtu, link_name, route_oif, Family, Netlink};
use crate::cni::error::Result;

/// One of the node's uplinks for a family, as found on the node (`Netlink::uplinks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub index: u32,
    pub mtu: Option<u32>,
    /// One of its default routes came from a router advertisement (`proto ra`).
    pub ra_default: bool,
}

/// An uplink sysctl of the spec that the node does not hold.
#[derive(Debug, PartialEq, Eq)]
pub struct UplinkFault {
    pub sysctl: &'static Sysctl,
    pub uplink: String,
    /// What the uplink holds (once ADD has switched forwarding on).
    pub got: String,
}

impl UplinkFault {
    pub fn fix(&self) -> String {
        self.sysctl.fix(&self.uplink)
    }
}

/// How ADD's error and CHECK's message read.
impl fmt::Display for UplinkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.sysctl;
        write!(
            f,
            "the node's uplink {} (it holds the {} default route) has {}={}, expected {}: \
             {} (fix: `{}`)",
            self.uplink,
            s.family.name(),
            s.dotted(&self.uplink),
            self.got,
            s.value,
            s.if_wrong,
            self.fix()
        )
    }
}

impl Family {
    /// `/proc/sys` key of an interface's own flag `name` in this family.
    fn conf_key(self, ifname: &str, name: &str) -> String {
        let dir = if self.is_v6() { "ipv6" } else { "ipv4" };
        format!("net/{dir}/conf/{ifname}/{name}")
    }

    /// What this family's uplinks lack of the spec once ADD is done (`read` reads a key under
    /// /proc/sys): ADD asks before it writes anything, CHECK and doctor afterwards. Writing the
    /// node's forwarding switch (ADD does when it is off) sets every interface's own forwarding
    /// flag, the uplinks' included, for both families; and for IPv6 it removes at once every
    /// default route learned from router advertisements on an interface whose accept_ra is
    /// not 2 (the kernel's rt6_purge_dflt_routers). So an uplink's flag that is off counts
    /// only while the switch is on, and an uplink that forwards after ADD is one that will
    /// ignore router advertisements at accept_ra=1.
    pub fn uplink_faults(
        self,
        uplinks: &[Uplink],
        read: impl Fn(&str) -> Option<String>,
    ) -> Vec<UplinkFault> {
        let switch = self.forwarding();
        let switching_on = read(&switch.key("")).as_deref() != Some(switch.value);
        let mut out = Vec::new();
        for up in uplinks {
            let forwarding = if switching_on {
                Some("1".to_string())
            } else {
                read(&self.conf_key(&up.name, "forwarding"))
            };
            let mut judge = |s: &'static Sysctl, got: Option<String>| {
                if got.as_deref() != Some(s.value) {
                    out.push(UplinkFault {
                        sysctl: s,
                        uplink: up.name.clone(),
                        got: got.unwrap_or_else(|| "missing".into()),
                    });
                }
            };
            // Place::Uplink holds the uplink's own forwarding flag, as it is after ADD.
            for s in self.sysctls_at(Place::Uplink) {
                judge(s, forwarding.clone());
            }
            // accept_ra=0: the kernel learns no route there, whoever put a `proto ra` one in
            // (systemd-networkd does, handling advertisements itself) keeps it.
            let kernel_learns = read(&self.conf_key(&up.name, "accept_ra")).as_deref() != Some("0");
            if up.ra_default && kernel_learns && forwarding.as_deref() == Some("1") {
                for s in self.sysctls_at(Place::RaUplink) {
                    judge(s, read(&s.key(&up.name)));
                }
            }
        }
        out
    }
}

impl Netlink {
    /// The node's uplinks for `family`: the links its default routes in the main table leave
    /// by (each next hop of a multipath one), each once, in the table's order.
    pub async fn uplinks(&self, family: Family) -> Result<Vec<Uplink>> {
        let routes = match family {
            Family::V4 => self.routes_to(Ipv4Addr::UNSPECIFIED, 0).await?,
            Family::V6 => self.routes_to(Ipv6Addr::UNSPECIFIED, 0).await?,
        };
        let mut out: Vec<Uplink> = Vec::new();
        for r in &routes {
            let ra = r.header.protocol == RouteProtocol::Ra;
            let hops = r.attributes.iter().flat_map(|a| match a {
                RouteAttribute::MultiPath(hops) => hops.iter().map(|h| h.interface_index).collect(),
                _ => Vec::new(),
            });
            for index in route_oif(r).into_iter().chain(hops) {
                if let Some(u) = out.iter_mut().find(|u| u.index == index) {
                    u.ra_default |= ra;
                    continue;
                }
                let Some(link) = self.link_by_index(index).await? else {
                    continue;
                };
                out.push(Uplink {
                    name: link_name(&link).unwrap_or_else(|| format!("#{index}")),
                    index,
                    mtu: link_mtu(&link),
                    ra_default: ra,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uplink(name: &str, ra_default: bool) -> Uplink {
        Uplink {
            name: name.into(),
            index: 2,
            mtu: Some(1500),
            ra_default,
        }
    }

    /// `uplink_faults` on a node whose /proc/sys holds `keys`.
    fn faults(f: Family, up: &Uplink, keys: &[(&str, &str)]) -> Vec<String> {
        f.uplink_faults(std::slice::from_ref(up), |k| {
            keys.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        })
        .iter()
        .map(UplinkFault::fix)
        .collect()
    }

    #[test]
    fn an_ipv4_uplink_must_forward_once_ip_forward_is_on() {
        let up = uplink("eth0", false);
        let on = ("net/ipv4/ip_forward", "1");
        assert_eq!(
            faults(
                Family::V4,
                &up,
                &[on, ("net/ipv4/conf/eth0/forwarding", "0")]
            ),
            ["sysctl -w net.ipv4.conf.eth0.forwarding=1"]
        );
        assert!(faults(
            Family::V4,
            &up,
            &[on, ("net/ipv4/conf/eth0/forwarding", "1")]
        )
        .is_empty());
        // ip_forward off: ADD's writing it sets every interface's flag, the uplink's too.
        let off = ("net/ipv4/ip_forward", "0");
        assert!(faults(
            Family::V4,
            &up,
            &[off, ("net/ipv4/conf/eth0/forwarding", "0")]
        )
        .is_empty());
        // The message names the uplink, the family and the fix.
        let fault = Family::V4.uplink_faults(&[up], |k| {
            Some(if k == "net/ipv4/ip_forward" { "1" } else { "0" }.into())
        });
        let msg = fault[0].to_string();
        assert!(
            msg.starts_with("the node's uplink eth0 (it holds the IPv4 default route) has net.ipv4.conf.eth0.forwarding=0")
                && msg.ends_with("(fix: `sysctl -w net.ipv4.conf.eth0.forwarding=1`)"),
            "{msg}"
        );
    }

    #[test]
    fn an_ipv6_uplink_that_learns_its_default_route_needs_accept_ra_2() {
        let ra = uplink("eth0", true);
        let fix = ["sysctl -w net.ipv6.conf.eth0.accept_ra=2"];
        let off = ("net/ipv6/conf/all/forwarding", "0");
        let on = ("net/ipv6/conf/all/forwarding", "1");
        let accept = |v| ("net/ipv6/conf/eth0/accept_ra", v);
        let own = |v| ("net/ipv6/conf/eth0/forwarding", v);
        // Switching forwarding on would remove the route: ADD refuses.
        assert_eq!(faults(Family::V6, &ra, &[off, accept("1"), own("0")]), fix);
        // Forwarding on: the kernel ignores the advertisements, the route is not renewed.
        assert_eq!(faults(Family::V6, &ra, &[on, accept("1"), own("1")]), fix);
        // accept_ra=2 keeps learning; accept_ra=0 learns nothing in the kernel.
        assert!(faults(Family::V6, &ra, &[off, accept("2"), own("0")]).is_empty());
        assert!(faults(Family::V6, &ra, &[off, accept("0"), own("0")]).is_empty());
        // An uplink that does not forward itself still accepts them.
        assert!(faults(Family::V6, &ra, &[on, accept("1"), own("0")]).is_empty());
        // A static default route loses nothing.
        assert!(faults(Family::V6, &uplink("eth0", false), &[off, accept("1")]).is_empty());
    }

    #[test]
    fn a_vlan_uplink_is_spelled_as_sysctl_reads_it() {
        let s = Family::V4.sysctl(Place::Uplink, "forwarding");
        assert_eq!(s.key("eth0.100"), "net/ipv4/conf/eth0.100/forwarding");
        assert_eq!(
            s.fix("eth0.100"),
            "sysctl -w net.ipv4.conf.eth0/100.forwarding=1"
        );
    }
}
