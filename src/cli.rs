//! Commands for people (no CNI_COMMAND): `version`, `list`, `doctor`, `install`, `audit`,
//! `agent`.

use serde_json::json;
use std::path::PathBuf;

use crate::cni::types::SUPPORTED_VERSIONS;
use crate::config::DEFAULT_DATA_DIR;
use crate::dataplane::Netlink;

pub const USAGE: &str = "routed-cni: a routed (calico-style) Kubernetes CNI plugin

As a CNI plugin it is run by the container runtime with CNI_COMMAND set
(ADD, DEL, CHECK, GC, STATUS, VERSION) and the network config on stdin.

Commands for people:
  routed-cni list [--data-dir DIR] [--json]
                         the allocations of every pool in the store (default
                         /run/routed-cni), with pod, container, host veth and
                         whether the host veth exists on this node
  routed-cni doctor [--pod NAMESPACE/NAME | --container ID | --netns PATH | --all]
                    [--to IP | IPv4:PORT | [IPv6]:PORT] [--data-dir DIR] [--json]
                         walk a pod's packet path on this node (run it in the
                         node's network namespace): pod interface, address,
                         routes and gateway neighbour; host veth, its sysctls,
                         ip_forward, the /32 route, rp_filter; NAT rules and
                         counters; the allocation record. IPv6 addresses get
                         their own walk (the /128, fe80::ecee:eeff:feee:eeee
                         on the host veth, IPv6 sysctls and forwarding, the
                         /128 route, ip6tables). --to adds the route each side
                         takes to IP and whether it is masqueraded.
                         Each step prints ✓ or ✗, what it saw and the command
                         that fixes it. No selector means --all. Exit 0
                         healthy, 1 broken, 2 usage, 3 no such pod
  routed-cni install --pod-subnet CIDR[,CIDR6] [--cluster-cidr CIDR[,CIDR6]] [--mtu N]
                     [--log-file PATH] [--bin-dir /opt/cni/bin]
                     [--conf-dir /etc/cni/net.d] [--conf-name 10-routed-cni.conflist]
                     [--network-name k8s-pod-network]
                         copy this binary into the CNI bin dir and write the
                         conflist, each by temp file + rename; harmless to
                         re-run. Every flag also reads ROUTED_CNI_<FLAG> (e.g.
                         ROUTED_CNI_POD_SUBNET) from the environment
  routed-cni agent --node-name NAME [--cluster-cidr CIDR] [--api-server URL]
                   [--token-file PATH] [--ca-file PATH] [--resync-seconds 60]
                   [--stale-seconds 3*resync] [--health-addr 127.0.0.1:9465]
                   [install's --bin-dir, --conf-dir, --conf-name, --network-name,
                    --mtu, --log-file]
                         the DaemonSet's long-running side: reads this node's
                         podCIDR from the API server and runs install with it
                         (again when it changes), keeps a route to every other
                         node's podCIDRs via its InternalIP (both families,
                         marked `proto 77`; only those are ever changed),
                         re-applies both every resync from its watch-fed cache
                         (repairing what was removed by hand; it lists again only
                         at start and after a failed or expired watch), and
                         answers GET /healthz and /readyz. The API server
                         defaults to https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT,
                         token and CA to the pod's service account. Env:
                         NODE_NAME, ROUTED_CNI_API_SERVER, ROUTED_CNI_TOKEN_FILE,
                         ROUTED_CNI_CA_FILE, ROUTED_CNI_RESYNC_SECONDS,
                         ROUTED_CNI_STALE_SECONDS, ROUTED_CNI_HEALTH_ADDR and
                         install's ROUTED_CNI_*. SIGTERM exits, routes stay
  routed-cni audit [--data-dir DIR] [--host-veth-prefix rcni] [--json]
                         anything of ours on this node that no live allocation
                         explains (veths, /32 routes, NAT jumps and chains) and
                         allocations whose host veth is gone; exit 1 on a leak
  routed-cni version     the plugin version and the CNI versions it speaks
  routed-cni --help      this text
";

/// Runs a CLI command and returns the process exit code.
pub fn run(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("version") | Some("--version") => {
            println!(
                "routed-cni {} (CNI {})",
                env!("CARGO_PKG_VERSION"),
                SUPPORTED_VERSIONS.join(", ")
            );
            0
        }
        Some("list") => list(&args[1..]),
        Some("doctor") => crate::doctor::run(&args[1..]),
        Some("install") => install(&args[1..]),
        Some("audit") => crate::audit::run(&args[1..]),
        Some("agent") => crate::agent::run(&args[1..]),
        None | Some("--help") | Some("-h") | Some("help") => {
            print!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("routed-cni: unknown command {other:?}\n\n{USAGE}");
            2
        }
    }
}

fn list(args: &[String]) -> i32 {
    let mut data_dir = PathBuf::from(DEFAULT_DATA_DIR);
    let mut as_json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => as_json = true,
            "--data-dir" => match it.next() {
                Some(d) => data_dir = PathBuf::from(d),
                None => {
                    eprintln!("routed-cni list: --data-dir needs a directory");
                    return 2;
                }
            },
            other => {
                eprintln!("routed-cni list: unknown argument {other:?}");
                return 2;
            }
        }
    }
    let pools = match crate::ipam::scan(&data_dir) {
        Ok(pools) => pools,
        Err(e) => {
            eprintln!("routed-cni list: {e}");
            return 1;
        }
    };
    let rt = match crate::commands::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("routed-cni list: {e}");
            return 1;
        }
    };
    let host = rt.block_on(async { Netlink::connect() }).ok();
    let mut rows = Vec::new();
    let mut status = 0;
    let mut unreadable = Vec::new();
    for pool in pools {
        if let Some(e) = &pool.error {
            eprintln!("routed-cni list: pool {}: {e}", pool.name);
            status = 1;
            continue;
        }
        for u in pool.unreadable {
            // Shown, never skipped: its address stays taken until a person looks.
            eprintln!("routed-cni list: {}", u.describe());
            status = 1;
            unreadable.push((pool.name.clone(), u));
        }
        for r in pool.records.into_iter().map(|f| f.record) {
            let alive = match (&host, r.host_veth.is_empty()) {
                (Some(h), false) => rt
                    .block_on(h.link_by_name(&r.host_veth))
                    .ok()
                    .flatten()
                    .is_some(),
                _ => false,
            };
            rows.push((pool.name.clone(), r, alive));
        }
    }
    if as_json {
        let doc: Vec<_> = rows
            .iter()
            .map(|(pool, r, alive)| json!({"pool": pool, "record": r, "hostVethPresent": alive}))
            .chain(unreadable.iter().map(|(pool, u)| {
                json!({"pool": pool, "ip": u.ip, "unreadable": u.reason, "path": u.path})
            }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("serializes")
        );
    } else {
        // Columns as wide as their longest entry: IPv6 pools and addresses run long.
        let pool_w = rows
            .iter()
            .map(|(p, _, _)| p.len())
            .max()
            .unwrap_or(0)
            .max(18);
        let ip_w = rows
            .iter()
            .map(|(_, r, _)| r.ip.to_string().len())
            .max()
            .unwrap_or(0)
            .max(15);
        println!(
            "{:<pool_w$} {:<ip_w$} {:<32} {:<15} {:<6} CONTAINER",
            "POOL", "IP", "POD", "HOST VETH", "ALIVE"
        );
        for (pool, r, alive) in &rows {
            let pod = format!(
                "{}/{}",
                r.pod_namespace.as_deref().unwrap_or("-"),
                r.pod_name.as_deref().unwrap_or("-")
            );
            println!(
                "{pool:<pool_w$} {:<ip_w$} {pod:<32} {:<15} {:<6} {}/{}",
                r.ip.to_string(),
                r.host_veth,
                if *alive { "yes" } else { "NO" },
                r.container_id,
                r.ifname
            );
        }
        for (pool, u) in &unreadable {
            println!(
                "{pool:<pool_w$} {:<ip_w$} {:<32} {:<15} {:<6} unreadable record {}",
                u.ip.to_string(),
                "?",
                "?",
                "?",
                u.path.display()
            );
        }
        eprintln!("{} allocation(s) in {}", rows.len(), data_dir.display());
    }
    status
}

fn install(args: &[String]) -> i32 {
    let opts = match crate::install::parse_args(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("routed-cni install: {e}");
            return 2;
        }
    };
    match crate::install::install(&opts) {
        Ok(done) => {
            let say = |changed: bool| if changed { "installed" } else { "unchanged" };
            println!(
                "{} {}\n{} {}",
                opts.bin_dir.join("routed-cni").display(),
                say(done.binary_changed),
                opts.conf_dir.join(&opts.conf_name).display(),
                say(done.config_changed)
            );
            0
        }
        Err(e) => {
            eprintln!("routed-cni install: {e}");
            1
        }
    }
}
