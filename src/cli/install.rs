//! `install`'s and `uninstall`'s flags, and the install settings `agent` shares with them.
//! Every flag falls back to a `ROUTED_CNI_<FLAG>` variable, for a DaemonSet.

use clap::builder::BoolishValueParser;
use clap::Args;
use ipnetwork::IpNetwork;
use std::path::PathBuf;

use crate::install::{
    parse_cidrs, InstallOptions, InstallSettings, UninstallOptions, DEFAULT_BIN_DIR,
    DEFAULT_CONF_DIR, DEFAULT_CONF_NAME, DEFAULT_NETWORKMANAGER_CONF_DIR,
    DEFAULT_SYSTEMD_NETWORK_DIR,
};

/// At most one CIDR per family, IPv4 first (what `parse_cidrs` gives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidrs(pub Vec<IpNetwork>);

fn pod_subnet(s: &str) -> Result<Cidrs, String> {
    parse_cidrs("pod-subnet", s).map(Cidrs)
}

fn cluster_cidr(s: &str) -> Result<Cidrs, String> {
    parse_cidrs("cluster-cidr", s).map(Cidrs)
}

/// Where install writes, and so where uninstall removes.
#[derive(Debug, Args)]
pub struct DirsArgs {
    /// The CNI bin dir the binary is copied into
    #[arg(long, value_name = "DIR", env = "ROUTED_CNI_BIN_DIR", default_value = DEFAULT_BIN_DIR)]
    bin_dir: PathBuf,
    /// The CNI config dir the conflist is written into
    #[arg(long, value_name = "DIR", env = "ROUTED_CNI_CONF_DIR", default_value = DEFAULT_CONF_DIR)]
    conf_dir: PathBuf,
    /// The conflist's file name (runtimes use the first file of the dir)
    #[arg(long, value_name = "NAME", env = "ROUTED_CNI_CONF_NAME", default_value = DEFAULT_CONF_NAME)]
    conf_name: String,
    /// udev's .link dir: 10-routed-cni.link keeps udev off our veths' MACs (only if the dir exists)
    #[arg(
        long,
        value_name = "DIR",
        env = "ROUTED_CNI_SYSTEMD_NETWORK_DIR",
        default_value = DEFAULT_SYSTEMD_NETWORK_DIR
    )]
    systemd_network_dir: PathBuf,
    /// NetworkManager's conf.d: routed-cni.conf marks our interfaces unmanaged (only if the dir exists)
    #[arg(
        long,
        value_name = "DIR",
        env = "ROUTED_CNI_NETWORKMANAGER_CONF_DIR",
        default_value = DEFAULT_NETWORKMANAGER_CONF_DIR
    )]
    networkmanager_conf_dir: PathBuf,
}

/// Where the plugin goes and what its conflist says, except the pod subnets.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    #[command(flatten)]
    dirs: DirsArgs,
    /// The network's name in the conflist
    #[arg(
        long,
        value_name = "NAME",
        env = "ROUTED_CNI_NETWORK_NAME",
        default_value = "k8s-pod-network"
    )]
    network_name: String,
    /// The cluster's pod CIDRs (one per family), reached without masquerade
    #[arg(long, value_name = "CIDR[,CIDR6]", env = "ROUTED_CNI_CLUSTER_CIDR", value_parser = cluster_cidr)]
    cluster_cidr: Option<Cidrs>,
    /// The pods' MTU [default: the MTU of the node's default-route interface]
    #[arg(long, value_name = "N", env = "ROUTED_CNI_MTU")]
    mtu: Option<u32>,
    /// The plugin's log file, a path on the node [default: stderr only]
    #[arg(long, value_name = "PATH", env = "ROUTED_CNI_LOG_FILE")]
    log_file: Option<String>,
    /// Chain routed-cni alone: no portmap, so pods' hostPorts are ignored (for nodes without
    /// the reference CNI plugins in the bin dir)
    // Boolish: the variable may say true/false, yes/no, on/off, 1/0; anything else is an error
    // naming it rather than a silent "set".
    #[arg(long, env = "ROUTED_CNI_NO_PORTMAP", value_parser = BoolishValueParser::new())]
    no_portmap: bool,
    /// The plugin's address store (the conflist's ipam.dataDir), a path on the node; the agent
    /// reads this node's pods from it for NetworkPolicy [default: the plugin's, /run/routed-cni]
    #[arg(long, value_name = "DIR", env = "ROUTED_CNI_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl SettingsArgs {
    pub fn into_settings(self) -> InstallSettings {
        let d = self.dirs;
        InstallSettings {
            bin_dir: d.bin_dir,
            conf_dir: d.conf_dir,
            conf_name: d.conf_name,
            systemd_network_dir: d.systemd_network_dir,
            networkmanager_conf_dir: d.networkmanager_conf_dir,
            network_name: self.network_name,
            cluster_cidrs: self.cluster_cidr.map(|c| c.0).unwrap_or_default(),
            mtu: self.mtu,
            log_file: self.log_file,
            portmap: !self.no_portmap,
            data_dir: self.data_dir,
        }
    }
}

/// Install the plugin: copy this binary into the CNI bin dir and write the conflist
///
/// Also writes, only where the directory exists on the node, a systemd .link file that keeps
/// udev from rewriting our veths' MACs and a NetworkManager drop-in that marks our interfaces
/// unmanaged. Each file is written to a temp file, synced and renamed into place, so a runtime
/// never reads a half-written config or execs a half-copied binary; re-running it is harmless.
/// Every flag also reads ROUTED_CNI_<FLAG> (e.g. ROUTED_CNI_POD_SUBNET) from the environment.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// This node's pod CIDR (two, comma-separated, for dual-stack) [required]
    #[arg(long, value_name = "CIDR[,CIDR6]", env = "ROUTED_CNI_POD_SUBNET", value_parser = pod_subnet)]
    pod_subnet: Option<Cidrs>,
    #[command(flatten)]
    settings: SettingsArgs,
}

impl InstallArgs {
    /// The options, or why they are incomplete. (The subnet is checked here rather than by
    /// clap's `required` so that the message can name the variable too.)
    pub fn into_options(self) -> Result<InstallOptions, String> {
        let pod_subnets = self.pod_subnet.ok_or(
            "--pod-subnet (or ROUTED_CNI_POD_SUBNET) is required: this node's pod CIDR (two, comma-separated, for dual-stack)",
        )?;
        Ok(self.settings.into_settings().for_subnets(pod_subnets.0))
    }
}

/// Remove what install wrote: the binary, the conflist, the .link file and the NetworkManager drop-in
///
/// Each is removed only if it is ours (a routed-cni binary, a conflist whose first plugin is
/// routed-cni, the .link file and drop-in install writes); a file of the same name that is not
/// ours is kept and makes the exit code 1. Files already gone are fine: running it again
/// exits 0. Pods still running keep their network, but new pods on the node cannot start.
/// Every flag also reads ROUTED_CNI_<FLAG> from the environment, as for install.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    dirs: DirsArgs,
}

impl UninstallArgs {
    pub fn into_options(self) -> UninstallOptions {
        let d = self.dirs;
        UninstallOptions {
            bin_dir: d.bin_dir,
            conf_dir: d.conf_dir,
            conf_name: d.conf_name,
            systemd_network_dir: d.systemd_network_dir,
            networkmanager_conf_dir: d.networkmanager_conf_dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Command};
    use super::*;

    fn install(args: &[&str]) -> Result<InstallOptions, String> {
        let argv: Vec<&str> = std::iter::once("install")
            .chain(args.iter().copied())
            .collect();
        match parse(&argv).map_err(|e| e.to_string())?.command {
            Some(Command::Install(a)) => a.into_options(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_defaults_and_bad_values() {
        let o = install(&[
            "--pod-subnet",
            "10.1.2.0/24",
            "--bin-dir",
            "/x/bin",
            "--mtu",
            "1400",
        ])
        .unwrap();
        assert_eq!(o.bin_dir, PathBuf::from("/x/bin"));
        assert_eq!(o.conf_dir, PathBuf::from(DEFAULT_CONF_DIR));
        assert_eq!(o.conf_name, DEFAULT_CONF_NAME);
        assert_eq!(
            (o.systemd_network_dir, o.networkmanager_conf_dir),
            (
                PathBuf::from("/etc/systemd/network"),
                PathBuf::from("/etc/NetworkManager/conf.d")
            )
        );
        assert_eq!(o.network_name, "k8s-pod-network");
        assert_eq!((o.mtu, o.log_file), (Some(1400), None));
        assert!(o.portmap, "portmap is chained by default");
        assert!(
            !install(&["--pod-subnet", "10.1.2.0/24", "--no-portmap"])
                .unwrap()
                .portmap
        );
        assert!(o.cluster_cidrs.is_empty());
        assert!(install(&["--pod-subnet", "10.1.2.3/24"])
            .unwrap_err()
            .contains("host bits"));
        assert!(install(&["--pod-subnet", "10.1.2.0/24", "--bogus", "1"])
            .unwrap_err()
            .contains("--bogus"));
        assert!(install(&["--pod-subnet", "10.1.2.0/24", "--mtu", "x"])
            .unwrap_err()
            .contains("--mtu"));
        assert!(install(&["--pod-subnet", "10.1.2.0/24", "--mtu"]).is_err());
        let d = install(&[
            "--pod-subnet",
            "fd00:10:244:1::/64, 10.244.1.0/24",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/48",
        ])
        .unwrap();
        assert_eq!(d.pod_subnets[0].to_string(), "10.244.1.0/24");
        assert_eq!(d.pod_subnets[1].to_string(), "fd00:10:244:1::/64");
        assert_eq!(d.cluster_cidrs.len(), 2);
        assert!(install(&["--pod-subnet", "10.1.0.0/24,10.2.0.0/24"])
            .unwrap_err()
            .contains("two CIDRs of one family"));
    }

    #[test]
    fn uninstall_takes_the_same_dirs() {
        let argv = [
            "uninstall",
            "--bin-dir=/b",
            "--conf-dir=/c",
            "--systemd-network-dir=/s",
            "--networkmanager-conf-dir",
            "/n",
        ];
        let Some(Command::Uninstall(a)) = parse(&argv).unwrap().command else {
            panic!("uninstall")
        };
        assert_eq!(
            a.into_options(),
            UninstallOptions {
                bin_dir: "/b".into(),
                conf_dir: "/c".into(),
                conf_name: DEFAULT_CONF_NAME.into(),
                systemd_network_dir: "/s".into(),
                networkmanager_conf_dir: "/n".into(),
            }
        );
        // Uninstall needs no subnet, and takes none of install's other settings.
        assert!(parse(&["uninstall", "--pod-subnet", "10.1.2.0/24"]).is_err());
    }
}
