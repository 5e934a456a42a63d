//! Entry point: CNI mode when CNI_COMMAND is set, otherwise a small CLI.

use std::io::Write;

const USAGE: &str = "routed-cni: a routed (calico-style) Kubernetes CNI plugin

As a CNI plugin it is run by the container runtime with CNI_COMMAND set
(ADD, DEL, CHECK, GC, STATUS, VERSION) and the network config on stdin.

Commands for people:
  routed-cni version     print the plugin version and the CNI versions it speaks
  routed-cni --help      this text
";

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
    match args.first().map(String::as_str) {
        Some("version") | Some("--version") => {
            println!(
                "routed-cni {} (CNI {})",
                env!("CARGO_PKG_VERSION"),
                routed_cni::cni::types::SUPPORTED_VERSIONS.join(", ")
            );
        }
        None | Some("--help") | Some("-h") | Some("help") => print!("{USAGE}"),
        Some(other) => {
            eprintln!("routed-cni: unknown command {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
}
