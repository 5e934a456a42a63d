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
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(routed_cni::cli::run(&args));
}
