//! What on the node is routed-cni's: a link is ours only when its name is the configured
//! prefix plus exactly the 11 lowercase hex characters `host_veth_name` appends, *and* its kind
//! is veth. GC, audit and the host-route takeover all ask this one predicate, so a prefix that
//! happens to start another interface's name (`eth` and `eth0`, `rcni` and `rcnimine`) or a
//! non-veth link that borrowed a name of ours is never deleted, reported or stolen from.

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;

use super::netlink::nl_err;
use super::{link_is_veth, link_name, Netlink};
use crate::cni::error::Result;

/// How many hash characters follow the prefix in a host veth's name.
pub const HASH_CHARS: usize = 11;

/// True when `name` is `prefix` followed by exactly 11 lowercase hex characters.
pub fn is_our_veth_name(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == HASH_CHARS
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// True when `link` is one of our host veths: a veth with a name of ours.
pub fn is_our_veth(link: &LinkMessage, prefix: &str) -> bool {
    link_is_veth(link) && link_name(link).is_some_and(|n| is_our_veth_name(&n, prefix))
}

impl Netlink {
    /// Every link of the namespace, for the predicate above to sort.
    pub async fn links(&self) -> Result<Vec<LinkMessage>> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links
            .try_next()
            .await
            .map_err(|e| nl_err("list links", e))?
        {
            out.push(l);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::host_veth_name;
    use crate::ipam::attachment_hash;

    #[test]
    fn only_prefix_plus_eleven_lowercase_hex_is_ours() {
        let ours = host_veth_name("rcni", &attachment_hash("c", "eth0"));
        assert!(is_our_veth_name(&ours, "rcni"));
        for name in [
            "rcnimine",         // the prefix alone is not enough
            "rcni0123456789",   // 10 hex
            "rcni0123456789ab", // 12 hex
            "rcni0123456789A",  // uppercase is not what we write
            "rcni0123456789g",  // not hex
            "xrcni0123456789a", // prefix not at the start
            "eth0",
        ] {
            assert!(!is_our_veth_name(name, "rcni"), "{name}");
        }
        // With a prefix that collides with the uplink's name, the uplink is still not ours.
        assert!(!is_our_veth_name("eth0", "eth"));
        assert!(is_our_veth_name("eth0123456789a", "eth"));
    }
}
