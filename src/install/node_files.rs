//! The two files that keep the node's own network software off our interfaces: a systemd
//! `.link` file (udev) and a NetworkManager drop-in. Each is written only where its directory
//! already exists on the node: a node without NetworkManager or systemd must not grow their
//! config directories, and a file in a directory nobody reads would only mislead.

use std::path::{Path, PathBuf};

use crate::config::DEFAULT_HOST_VETH_PREFIX;

pub const DEFAULT_SYSTEMD_NETWORK_DIR: &str = "/etc/systemd/network";
pub const DEFAULT_NETWORKMANAGER_CONF_DIR: &str = "/etc/NetworkManager/conf.d";
/// udev applies only the first `.link` file (in lexical order over all its directories) that
/// matches a link, and systemd ships `99-default.link` (`MACAddressPolicy=persistent`), so ours
/// must sort before it.
pub const LINK_FILE_NAME: &str = "10-routed-cni.link";
pub const NM_DROP_IN_NAME: &str = "routed-cni.conf";

/// The first line of both files: what `uninstall` recognizes as ours.
pub const HEADER: &str = "# Written by `routed-cni install`; `routed-cni uninstall` removes it.";

/// One kind of interface routed-cni creates on the node: a shell glob over its name and its
/// kernel driver (as `ethtool -i` names it).
pub struct OurInterface {
    pub name_glob: String,
    pub driver: &'static str,
}

/// Every interface routed-cni creates on the node. THE one place to add a new kind (the
/// VXLAN device, when encapsulation lands, e.g. `{ name_glob: "rcni.vxlan", driver: "vxlan" }`):
/// both files below are generated from it. Install writes the conflist without
/// `hostVethPrefix`, so its veths carry the default prefix.
pub fn our_interfaces() -> Vec<OurInterface> {
    vec![OurInterface {
        name_glob: format!("{DEFAULT_HOST_VETH_PREFIX}*"),
        driver: "veth",
    }]
}

/// The `.link` file. ADD already sets both veth MACs in the creating request, which udev's
/// `MACAddressPolicy=persistent` leaves alone; this file also covers links whose MAC the
/// kernel picked, and keeps any other .link policy (names, alternative names) off them.
pub fn link_file() -> String {
    let ours = our_interfaces();
    let names: Vec<&str> = ours.iter().map(|i| i.name_glob.as_str()).collect();
    let mut drivers: Vec<&str> = ours.iter().map(|i| i.driver).collect();
    drivers.dedup();
    format!(
        "{HEADER}\n\
         # routed-cni's interfaces keep the MAC and name they were created with: the pods'\n\
         # neighbour entries and CHECK rely on both. Sorts before 99-default.link, because udev\n\
         # applies only the first .link file that matches.\n\
         [Match]\n\
         OriginalName={}\n\
         Driver={}\n\
         \n\
         [Link]\n\
         NamePolicy=keep\n\
         MACAddressPolicy=none\n",
        names.join(" "),
        drivers.join(" ")
    )
}

/// The NetworkManager drop-in. `+=` appends to the list earlier files set (Ubuntu's
/// `10-globally-managed-devices.conf`, another CNI's drop-in) instead of replacing it, which a
/// plain `=` in a later file would.
pub fn nm_drop_in() -> String {
    let devices: Vec<String> = our_interfaces()
        .iter()
        .map(|i| format!("interface-name:{}", i.name_glob))
        .collect();
    format!(
        "{HEADER}\n\
         # NetworkManager must not manage routed-cni's interfaces: no DHCP on them, no route or\n\
         # address changes, no taking them down.\n\
         [keyfile]\n\
         unmanaged-devices+={}\n",
        devices.join(";")
    )
}

/// One of the two files, and what install does with it.
pub struct NodeFile {
    pub dir: PathBuf,
    pub name: &'static str,
    pub text: String,
    /// For people: what the file is for.
    pub what: &'static str,
}

impl NodeFile {
    pub fn path(&self) -> PathBuf {
        self.dir.join(self.name)
    }

    /// The directory exists on this node (a symlink to a directory counts).
    pub fn dir_exists(&self) -> bool {
        self.dir.is_dir()
    }
}

pub fn node_files(systemd_network_dir: &Path, networkmanager_conf_dir: &Path) -> [NodeFile; 2] {
    [
        NodeFile {
            dir: systemd_network_dir.to_path_buf(),
            name: LINK_FILE_NAME,
            text: link_file(),
            what: "systemd .link file",
        },
        NodeFile {
            dir: networkmanager_conf_dir.to_path_buf(),
            name: NM_DROP_IN_NAME,
            text: nm_drop_in(),
            what: "NetworkManager drop-in",
        },
    ]
}

/// True when `text` is one of the files above (any version: only the header is compared).
pub fn is_ours(text: &str) -> bool {
    text.lines().next() == Some(HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_file_matches_our_veths_and_sorts_before_the_default() {
        let t = link_file();
        assert!(is_ours(&t));
        assert!(
            t.contains("[Match]\nOriginalName=rcni*\nDriver=veth\n"),
            "{t}"
        );
        assert!(
            t.contains("[Link]\nNamePolicy=keep\nMACAddressPolicy=none\n"),
            "{t}"
        );
        assert!(LINK_FILE_NAME < "99-default.link");
        assert!(LINK_FILE_NAME.ends_with(".link"));
    }

    #[test]
    fn the_drop_in_appends_our_interfaces_to_the_unmanaged_list() {
        let t = nm_drop_in();
        assert!(is_ours(&t));
        assert!(
            t.ends_with("[keyfile]\nunmanaged-devices+=interface-name:rcni*\n"),
            "{t}"
        );
        assert!(NM_DROP_IN_NAME.ends_with(".conf"));
        assert!(!is_ours(
            "[keyfile]\nunmanaged-devices=interface-name:cali*\n"
        ));
    }
}
