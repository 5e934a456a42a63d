//! The netlink connection every dataplane file works through, and how its failures read.

use crate::cni::error::{CniError, Code, Result};
use crate::netns::Netns;
use rtnetlink::Handle;

pub(crate) const ENODEV: i32 = 19;
pub(crate) const EEXIST: i32 = 17;

/// The runtime every netlink connection is driven by: current-thread, because a process does
/// one thing at a time and namespace switches are per thread, so no worker thread may exist.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::new(Code::Internal, format!("start async runtime: {e}")))
}

/// The kernel's errno behind a netlink failure, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// A netlink failure as a person reads it: the kernel's errno text when it is one.
pub fn error_text(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

pub(crate) fn nl_err(what: impl std::fmt::Display, e: rtnetlink::Error) -> CniError {
    CniError::dataplane(format!("{what}: {}", error_text(&e)))
}

/// A netlink connection bound to one namespace, driven by the current tokio runtime.
#[derive(Clone)]
pub struct Netlink {
    pub handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's namespace.
    pub fn connect() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::dataplane(format!("open netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection in `ns`: the socket is created inside it and stays bound to it.
    pub fn connect_in(ns: &Netns) -> Result<Netlink> {
        let guard = ns.enter()?;
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::dataplane(format!("open netlink socket in {}: {e}", ns.path)))?;
        drop(guard);
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }
}
