//! Forgetting a released address's connections (ctnetlink, as `conntrack -D -s/-d IP` does: a
//! dump, then one delete per entry that names the address). Without it, a new pod that gets
//! the address inherits the old pod's established flows: packets of a flow that the new pod's
//! NetworkPolicy would deny pass as "established", and stale UDP entries (DNAT to an old
//! backend) blackhole traffic.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, Tuple};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::net::IpAddr;

const ENOENT: i32 = 2;

fn family(ip: IpAddr) -> NetfilterProtoFamily {
    if ip.is_ipv4() {
        NetfilterProtoFamily::IPv4
    } else {
        NetfilterProtoFamily::IPv6
    }
}

fn request(msg: ConntrackMessage, ip: IpAddr, flags: u16) -> Vec<u8> {
    let mut nl = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family(ip), 0, 0),
            msg,
        )),
    );
    nl.header.flags = NLM_F_REQUEST | flags;
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

/// Whether a tuple (original or reply direction) has `ip` as source or destination.
fn names(tuple: &[Tuple], ip: IpAddr) -> bool {
    tuple.iter().any(|t| match t {
        Tuple::Ip(addrs) => addrs.iter().any(
            |a| matches!(a, IPTuple::SourceAddress(x) | IPTuple::DestinationAddress(x) if *x == ip),
        ),
        _ => false,
    })
}

/// The messages in one read, and whether the dump (or the request's acknowledgement) ended.
fn parse(buf: &[u8]) -> Result<(Vec<NetlinkMessage<NetfilterMessage>>, bool), String> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut done = false;
    while offset < buf.len() {
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..])
            .map_err(|e| format!("decode a conntrack message: {e}"))?;
        let len = msg.header.length as usize;
        if len == 0 {
            break;
        }
        offset += (len + 3) & !3;
        match &msg.payload {
            NetlinkPayload::Done(_) => done = true,
            NetlinkPayload::Error(e) => {
                done = true;
                if let Some(code) = e.code {
                    let errno = -code.get();
                    if errno != ENOENT {
                        return Err(format!("{}", std::io::Error::from_raw_os_error(errno)));
                    }
                }
            }
            _ => {}
        }
        out.push(msg);
    }
    Ok((out, done))
}

fn socket() -> Result<Socket, String> {
    let mut s = Socket::new(NETLINK_NETFILTER).map_err(|e| format!("open ctnetlink: {e}"))?;
    s.bind_auto().map_err(|e| format!("bind ctnetlink: {e}"))?;
    s.connect(&SocketAddr::new(0, 0))
        .map_err(|e| format!("connect ctnetlink: {e}"))?;
    Ok(s)
}

/// Deletes every conntrack entry of this network namespace whose original or reply tuple has
/// `ip` as source or destination; returns how many went. A kernel without conntrack has none.
pub fn forget(ip: IpAddr) -> Result<usize, String> {
    let s = socket()?;
    s.send(
        &request(ConntrackMessage::Get(Vec::new()), ip, NLM_F_DUMP),
        0,
    )
    .map_err(|e| format!("ask for the conntrack table: {e}"))?;
    let mut doomed = Vec::new();
    loop {
        let (buf, _) = s
            .recv_from_full()
            .map_err(|e| format!("read the conntrack table: {e}"))?;
        let (msgs, done) = parse(&buf)?;
        for m in msgs {
            let NetlinkPayload::InnerMessage(nf) = m.payload else {
                continue;
            };
            let netlink_packet_netfilter::NetfilterMessageInner::Conntrack(
                ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs),
            ) = nf.inner
            else {
                continue;
            };
            let orig = attrs.iter().find_map(|a| match a {
                ConntrackAttribute::CtaTupleOrig(t) => Some(t.clone()),
                _ => None,
            });
            let reply_names = attrs.iter().any(|a| match a {
                ConntrackAttribute::CtaTupleReply(t) => names(t, ip),
                _ => false,
            });
            if let Some(orig) = orig {
                if names(&orig, ip) || reply_names {
                    doomed.push(orig);
                }
            }
        }
        if done || buf.is_empty() {
            break;
        }
    }
    let mut gone = 0;
    for orig in doomed {
        let del = ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(orig)]);
        s.send(&request(del, ip, NLM_F_ACK), 0)
            .map_err(|e| format!("delete a conntrack entry: {e}"))?;
        let (buf, _) = s
            .recv_from_full()
            .map_err(|e| format!("delete a conntrack entry: {e}"))?;
        // ENOENT: it expired meanwhile, which is as good.
        parse(&buf)?;
        gone += 1;
    }
    Ok(gone)
}

/// `forget`, for the verbs: a failure is logged, never fatal (a node without conntrack, or a
/// kernel that refuses, must not fail ADD or DEL).
pub fn forget_logged(ip: IpAddr, why: &str) {
    match forget(ip) {
        Ok(0) => {}
        Ok(n) => crate::debug!(
            "forgot {n} conntrack entr{} of {why} address {ip}",
            if n == 1 { "y" } else { "ies" }
        ),
        Err(e) => crate::warn!("conntrack entries of {why} address {ip} not removed: {e}"),
    }
}
