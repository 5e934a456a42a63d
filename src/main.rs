//! Entry point: CNI mode when CNI_COMMAND is set, otherwise the commands for people.

use std::io::Write;

fn main() {
    if let Some(command) = std::env::var_os("CNI_COMMAND") {
        let outcome = routed_cni::commands::run_cni(&command.to_string_lossy());
        if let Some(doc) = outcome.stdout {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{doc}");
            let _ = out.flush();
        }
        std::process::exit(outcome.exit_code);
    }
    std::process::exit(routed_cni::cli::run(std::env::args_os()));
}
