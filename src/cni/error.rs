//! CNI error codes and the one error type every layer converts into.

use std::fmt;

/// Well-known CNI error codes (SPEC §5) and our own codes (>= 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot service ADD right now.
    NotAvailable = 50,
    /// The address pool has no free address.
    PoolExhausted = 100,
    /// Building or tearing down the data path (links, addresses, routes, sysctls) failed.
    Dataplane = 101,
    /// Installing or removing NAT rules failed.
    Nat = 102,
    /// The on-disk IPAM store is unreadable or could not be written.
    Store = 103,
    /// A delegated IPAM plugin failed or could not be run.
    DelegatedIpam = 104,
    Internal = 999,
}

impl Code {
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

/// An error bound for the runtime: a code, a short message and optional details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

pub type Result<T> = std::result::Result<T, CniError>;

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Prefix the message with what we were doing, keeping the code.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    pub fn invalid_env(var: &str, problem: impl fmt::Display) -> Self {
        CniError::new(Code::InvalidEnv, format!("{var} {problem}"))
    }

    pub fn invalid_config(key: &str, problem: impl fmt::Display) -> Self {
        CniError::new(
            Code::InvalidConfig,
            format!("config key \"{key}\": {problem}"),
        )
    }

    pub fn dataplane(msg: impl Into<String>) -> Self {
        CniError::new(Code::Dataplane, msg)
    }

    pub fn store(msg: impl Into<String>) -> Self {
        CniError::new(Code::Store, msg)
    }

    pub fn nat(msg: impl Into<String>) -> Self {
        CniError::new(Code::Nat, msg)
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// Adds context to any displayable error while choosing its CNI code.
pub trait ErrorContext<T> {
    fn or_code(self, code: Code, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> ErrorContext<T> for std::result::Result<T, E> {
    fn or_code(self, code: Code, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| CniError::new(code, format!("{what}: {e}")))
    }
}

/// Several errors from best-effort teardown (DEL, GC), reported together.
pub fn join(errors: Vec<CniError>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.into_iter().next().expect("one error")),
        _ => {
            let code = errors[0].code;
            let msg = errors
                .iter()
                .map(|e| e.msg.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            Err(CniError::new(
                code,
                format!("{} errors: {msg}", errors.len()),
            ))
        }
    }
}
