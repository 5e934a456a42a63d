//! Asking the local agent's NetworkPolicy view (`GET /policy…` on its health listener,
//! policy/explain.rs): plain HTTP/1.1 over TCP with std only, a short timeout, one request per
//! connection. Used by `routed-cni policy` and by doctor's NetworkPolicy step.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

/// The agent's default `--health-addr`.
pub const DEFAULT_AGENT_ADDR: &str = "127.0.0.1:9465";

/// Connect, send and read together stay within this: the agent answers from memory.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// Nothing answered (refused, timed out) or the answer was not HTTP.
    Unreachable(String),
    /// The agent answered but has no view to give: NetworkPolicy off, not listed yet, or an
    /// agent without these endpoints.
    NoView(String),
}

impl AgentError {
    /// One line for people: what failed and what to check.
    pub fn explain(&self, addr: SocketAddr) -> String {
        match self {
            AgentError::Unreachable(e) => format!(
                "cannot ask the agent at http://{addr}: {e}; is `routed-cni agent` running on this node, with its health listener on {addr} (--health-addr) and --network-policy (the default)?"
            ),
            AgentError::NoView(e) => format!("the agent at http://{addr} has no NetworkPolicy view: {e}"),
        }
    }
}

/// `GET /policy?pod=NS/NAME`: `Ok((true, view))`, or `Ok((false, answer))` when the agent does
/// not know the pod.
pub fn pod(addr: SocketAddr, namespace: &str, name: &str) -> Result<(bool, Value), AgentError> {
    let path = format!(
        "/policy?pod={}/{}",
        percent_encode(namespace),
        percent_encode(name)
    );
    let (code, body) = get(addr, &path)?;
    match code {
        200 => Ok((true, body)),
        404 if body.get("found") == Some(&Value::Bool(false)) => Ok((false, body)),
        _ => Err(no_view(code, &body)),
    }
}

/// `GET /policy/verdict`.
pub fn verdict(
    addr: SocketAddr,
    src: IpAddr,
    dst: IpAddr,
    protocol: &str,
    port: u16,
) -> Result<Value, AgentError> {
    let path = format!(
        "/policy/verdict?src={}&dst={}&proto={protocol}&port={port}",
        percent_encode(&src.to_string()),
        percent_encode(&dst.to_string())
    );
    match get(addr, &path)? {
        (200, body) => Ok(body),
        (code, body) => Err(no_view(code, &body)),
    }
}

fn no_view(code: u16, body: &Value) -> AgentError {
    match body.get("error").and_then(Value::as_str) {
        Some(e) => AgentError::NoView(e.to_string()),
        // An agent from before these endpoints answers 404 in plain text.
        None => AgentError::NoView(format!(
            "HTTP {code} without an explanation (an agent older than `routed-cni policy`?)"
        )),
    }
}

/// Everything but unreserved characters, percent-encoded (pod names are DNS labels, but a
/// person may type anything).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One GET: the status code and the body as JSON (`Null` when it is not JSON).
fn get(addr: SocketAddr, path: &str) -> Result<(u16, Value), AgentError> {
    let unreachable = |what: &str, e: std::io::Error| {
        AgentError::Unreachable(match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("{what}: no answer within {}s", TIMEOUT.as_secs())
            }
            _ => format!("{what}: {e}"),
        })
    };
    let mut conn =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| unreachable("connect", e))?;
    let _ = conn.set_read_timeout(Some(TIMEOUT));
    let _ = conn.set_write_timeout(Some(TIMEOUT));
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| unreachable("send", e))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| unreachable("read", e))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| head.starts_with("HTTP/1."))
        .ok_or_else(|| {
            AgentError::Unreachable(format!(
                "not an HTTP answer: {:?}",
                head.chars().take(60).collect::<String>()
            ))
        })?;
    Ok((code, serde_json::from_str(body).unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn encodes_what_a_query_cannot_carry() {
        assert_eq!(percent_encode("web-1.x_y"), "web-1.x_y");
        assert_eq!(percent_encode("a/b&c=d"), "a%2Fb%26c%3Dd");
        assert_eq!(percent_encode("fd00::1"), "fd00%3A%3A1");
    }

    #[test]
    fn a_closed_port_is_unreachable_and_says_what_to_check() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = pod(addr, "x", "a").unwrap_err();
        assert!(matches!(e, AgentError::Unreachable(_)), "{e:?}");
        let line = e.explain(addr);
        assert!(
            line.contains(&addr.to_string()) && line.contains("--network-policy"),
            "{line}"
        );
    }

    #[test]
    fn an_agent_without_the_endpoint_has_no_view() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // The whole request first: closing a socket with unread bytes sends a reset,
            // which can reach the client before the answer does.
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
                .unwrap();
        });
        let e = verdict(
            addr,
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "tcp",
            80,
        )
        .unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(&e, AgentError::NoView(m) if m.contains("404")),
            "{e:?}"
        );
    }
}
