//! Minimal logging to stderr or the configured file. Never stdout: stdout carries the protocol.
//! Text by default (`<time> <level> pid=<pid> <message>`); the agent can write one JSON object
//! per line instead (`--log-format json`), as cluster log pipelines expect.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// How a line looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    /// `{"time":..,"level":..,"message":..,"fields":{"thread":..,..}}`, one per line.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("{s:?} is not a log format (text or json)")),
        }
    }
}

struct Sink {
    level: Level,
    file: Option<std::fs::File>,
    format: Format,
    /// Added to every JSON line's fields (the component, the node).
    fields: Vec<(String, String)>,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    level: Level::Info,
    file: None,
    format: Format::Text,
    fields: Vec::new(),
});

/// Further lines in `format`; `fields` go into every JSON line (besides the thread's name).
pub fn set_format(format: Format, fields: &[(&str, &str)]) {
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    sink.format = format;
    sink.fields = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
}

/// Sends further lines to `file` (appended, 0600) at `level`. A symlink there is refused, not
/// followed (root must not append to whatever file a link points at). If the file cannot be
/// opened we say so on stderr and keep logging there: a log problem must not fail a pod.
pub fn configure(level: Level, file: Option<&Path>) {
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    sink.level = level;
    sink.file = file.and_then(|path| {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc_flags::NOFOLLOW | libc_flags::CLOEXEC)
            .open(path)
            .map_err(|e| {
                eprintln!(
                    "routed-cni: cannot open log file {}: {e}; logging to stderr",
                    path.display()
                )
            })
            .ok()
    });
}

/// The open(2) flags, from nix's table rather than a libc dependency of our own.
mod libc_flags {
    use nix::fcntl::OFlag;
    pub const NOFOLLOW: i32 = OFlag::O_NOFOLLOW.bits();
    pub const CLOEXEC: i32 = OFlag::O_CLOEXEC.bits();
}

pub fn enabled(level: Level) -> bool {
    level <= SINK.lock().unwrap_or_else(|p| p.into_inner()).level
}

pub fn write(level: Level, msg: std::fmt::Arguments<'_>) {
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    if level > sink.level {
        return;
    }
    let line = match sink.format {
        Format::Text => {
            // One event, one line: messages quoting other programs' output may carry newlines.
            let msg = msg.to_string().replace('\n', " | ");
            format!(
                "{} {} pid={} {msg}\n",
                timestamp(),
                level.as_str(),
                std::process::id()
            )
        }
        Format::Json => json_line(level, &msg.to_string(), &sink.fields),
    };
    // One write call per line keeps lines whole when many plugin processes share the file.
    let written = match sink.file.as_mut() {
        Some(f) => f.write_all(line.as_bytes()).is_ok(),
        None => false,
    };
    if !written {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// One JSON object and a newline (JSON escapes the message's own newlines). Keys in a fixed
/// order, time first, for people reading the raw stream.
fn json_line(level: Level, msg: &str, extra: &[(String, String)]) -> String {
    let thread = std::thread::current();
    let mut fields = serde_json::Map::new();
    fields.insert("thread".into(), thread.name().unwrap_or("unnamed").into());
    fields.insert("pid".into(), std::process::id().into());
    for (k, v) in extra {
        fields.insert(k.clone(), v.as_str().into());
    }
    let s = |v: &str| serde_json::Value::from(v).to_string();
    format!(
        "{{\"time\":{},\"level\":{},\"message\":{},\"fields\":{}}}\n",
        s(&timestamp()),
        s(level.as_str()),
        s(msg),
        serde_json::Value::Object(fields)
    )
}

/// Now, as RFC 3339 UTC with milliseconds.
fn timestamp() -> String {
    rfc3339(SystemTime::now(), true)
}

/// `t` as RFC 3339 in UTC, to the millisecond or (as Kubernetes' metav1.Time) to the second,
/// without a date crate.
pub fn rfc3339(t: SystemTime, millis: bool) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = if millis {
        format!(".{:03}", since.subsec_millis())
    } else {
        String::new()
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    )
}

#[macro_export]
macro_rules! log_at {
    ($lvl:expr, $($arg:tt)*) => { $crate::log::write($lvl, format_args!($($arg)*)) };
}
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Error, $($arg)*) }; }
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Warn, $($arg)*) }; }
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Info, $($arg)*) }; }
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log_at!($crate::log::Level::Debug, $($arg)*) }; }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let extra = [("component".to_string(), "agent".to_string())];
        let line = std::thread::Builder::new()
            .name("node-watch".into())
            .spawn(move || json_line(Level::Warn, "a \"quoted\"\nsecond line\t\u{1}", &extra))
            .unwrap()
            .join()
            .unwrap();
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        assert!(line.starts_with("{\"time\":\""), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["message"], "a \"quoted\"\nsecond line\t\u{1}");
        assert_eq!(v["fields"]["thread"], "node-watch");
        assert_eq!(v["fields"]["component"], "agent");
        assert_eq!(v["fields"]["pid"], std::process::id());
        assert_eq!(v["time"].as_str().unwrap().len(), 24);
        assert_eq!("JSON".parse::<Format>(), Ok(Format::Json));
        assert!("xml".parse::<Format>().is_err());
    }

    #[test]
    fn levels() {
        assert_eq!(Level::parse("WARN"), Some(Level::Warn));
        assert_eq!(Level::parse("nope"), None);
        assert!(Level::Error < Level::Debug);
    }
}
