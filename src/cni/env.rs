//! The `CNI_*` environment: read, validated, and `CNI_ARGS` parsed.

use std::collections::BTreeMap;

use super::error::{CniError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }
}

/// Pod identity the runtime passes in `CNI_ARGS` (Kubernetes runtimes do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub infra_container_id: Option<String>,
    pub uid: Option<String>,
    /// Every pair as given, for delegated plugins and logs.
    pub all: BTreeMap<String, String>,
}

/// Parses `K=V;K=V`. Runtimes differ in order and in extra keys (`IgnoreUnknown=1`), so we take
/// every well-formed pair, keep the ones we know, and skip malformed fragments rather than fail
/// a pod over them.
pub fn parse_cni_args(raw: &str) -> PodArgs {
    let mut args = PodArgs::default();
    for pair in raw.split(';') {
        let pair = pair.trim();
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            continue;
        }
        let value = Some(v.to_string()).filter(|v| !v.is_empty());
        match k {
            "K8S_POD_NAMESPACE" => args.namespace = value,
            "K8S_POD_NAME" => args.name = value,
            "K8S_POD_INFRA_CONTAINER_ID" => args.infra_container_id = value,
            "K8S_POD_UID" => args.uid = value,
            _ => {}
        }
        args.all.insert(k.to_string(), v.to_string());
    }
    args
}

/// The attachment the runtime is asking about: (container ID, ifname) plus where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    /// Empty when the runtime gave none (allowed for DEL).
    pub netns: String,
    pub pod: PodArgs,
}

/// Container IDs become file and link-hash inputs: the spec's pattern, and a sane length.
pub fn validate_container_id(id: &str) -> Result<()> {
    const VAR: &str = "CNI_CONTAINERID";
    if id.is_empty() {
        return Err(CniError::invalid_env(
            VAR,
            "is missing or empty; the runtime must set it",
        ));
    }
    if id.len() > 256 {
        return Err(CniError::invalid_env(
            VAR,
            format!("is {} bytes long; at most 256 are allowed", id.len()),
        ));
    }
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok {
        return Err(CniError::invalid_env(
            VAR,
            format!("{id:?} is invalid: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
        ));
    }
    Ok(())
}

/// Interface names: the kernel's rules (IFNAMSIZ, no '/', ':' or whitespace, not "." or "..").
pub fn validate_ifname(name: &str) -> Result<()> {
    const VAR: &str = "CNI_IFNAME";
    if name.is_empty() {
        return Err(CniError::invalid_env(
            VAR,
            "is missing or empty; the runtime must set it (usually eth0)",
        ));
    }
    if name.len() > 15 {
        return Err(CniError::invalid_env(
            VAR,
            format!(
                "{name:?} is {} bytes long; interface names have at most 15",
                name.len()
            ),
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err(CniError::invalid_env(
            VAR,
            format!(
                "{name:?} is not a valid interface name (no '/', ':', whitespace, \".\" or \"..\")"
            ),
        ));
    }
    Ok(())
}

/// Reads a variable; a variable that holds invalid UTF-8 is reported, not silently dropped.
pub fn var(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(CniError::invalid_env(name, "is not valid UTF-8"))
        }
    }
}

/// Reads the attachment variables for ADD, DEL and CHECK.
pub fn attachment(command: Command) -> Result<Attachment> {
    let container_id = var("CNI_CONTAINERID")?.unwrap_or_default();
    validate_container_id(&container_id)?;
    let ifname = var("CNI_IFNAME")?.unwrap_or_default();
    validate_ifname(&ifname)?;
    let netns = var("CNI_NETNS")?.unwrap_or_default();
    if netns.is_empty() && command != Command::Del {
        return Err(CniError::invalid_env(
            "CNI_NETNS",
            format!(
                "is missing or empty; {} needs the pod's network namespace path",
                command.as_str()
            ),
        ));
    }
    let pod = parse_cni_args(&var("CNI_ARGS")?.unwrap_or_default());
    Ok(Attachment {
        container_id,
        ifname,
        netns,
        pod,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::error::Code;

    #[test]
    fn cni_args_in_any_order_with_unknown_keys() {
        let a = parse_cni_args(
            "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1",
        );
        assert_eq!(a.namespace.as_deref(), Some("kube-system"));
        assert_eq!(a.name.as_deref(), Some("coredns-1"));
        assert_eq!(a.infra_container_id.as_deref(), Some("abc"));
        assert_eq!(a.uid.as_deref(), Some("u-1"));
        assert_eq!(a.all.get("IgnoreUnknown").map(String::as_str), Some("1"));
    }

    #[test]
    fn cni_args_tolerates_junk() {
        let a = parse_cni_args(";;junk;=x; K8S_POD_NAME = web ;K8S_POD_NAMESPACE=;A=b=c");
        assert_eq!(a.name.as_deref(), Some("web"));
        assert_eq!(a.namespace, None);
        assert_eq!(a.all.get("A").map(String::as_str), Some("b=c"));
        assert_eq!(parse_cni_args(""), PodArgs::default());
    }

    #[test]
    fn container_ids() {
        assert!(validate_container_id("abc123").is_ok());
        assert!(validate_container_id("cnitool-77383ca0a0715733ca6f").is_ok());
        assert!(validate_container_id("a.b_c-d").is_ok());
        for bad in [
            "",
            "../etc",
            "a/b",
            ".hidden",
            "a b",
            "a\0b",
            "-x",
            &"a".repeat(257),
        ] {
            let e = validate_container_id(bad).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnv, "{bad:?}");
            assert!(e.msg.contains("CNI_CONTAINERID"), "{}", e.msg);
        }
    }

    #[test]
    fn ifnames() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("net1.100").is_ok());
        assert!(validate_ifname(&"a".repeat(15)).is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", &"a".repeat(16)] {
            let e = validate_ifname(bad).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnv, "{bad:?}");
            assert!(e.msg.contains("CNI_IFNAME"), "{}", e.msg);
        }
    }
}
