//! Named points where tests can kill the plugin, as a node crash or the OOM killer would, to
//! prove that no instant leaves the store corrupt or an address lost. Inert unless the
//! environment names a point in `ROUTED_CNI_CRASH_AT`, which only tests set.

use std::sync::OnceLock;

pub const ENV: &str = "ROUTED_CNI_CRASH_AT";

pub fn here(point: &str) {
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()));
    if wanted.as_deref() == Some(point) {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}
