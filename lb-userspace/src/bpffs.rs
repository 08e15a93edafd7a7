//! Whether pins last: a pin directory whose bpffs lives only in this process's mount namespace
//! loses its pins, and the XDP program in its links, when that namespace ends.
//!
//! `ip netns exec NS CMD` runs CMD in a mount namespace of its own with a fresh sysfs on /sys
//! (mounted with the namespace's name as its source, so that /sys/class/net shows NS's
//! interfaces). A bpffs mounted on its /sys/fs/bpf is that namespace's alone, and both vanish
//! when CMD exits: pins there would be gone before anyone could use them. `nsenter --net` enters
//! only the network namespace and keeps the host's /sys/fs/bpf.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Where `ip netns exec` finds named network namespaces (iproute2's `NETNS_RUN_DIR`).
const NETNS_RUN_DIR: &str = "/run/netns";

/// Why a pin directory was refused: its pins would not outlive the command.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TransientPins {
    /// The pin directory is on the private /sys of `ip netns exec`.
    #[error(
        "{} is on the /sys that `ip netns exec {netns}` mounted for this command alone: it \
         vanishes when the command exits, and with it the pins and the XDP program. Run \
         `nsenter --net={NETNS_RUN_DIR}/{netns} xlbd ... --pin-dir {}` instead (the host's \
         /sys/fs/bpf, a directory per namespace), or give --pin-dir on a bpffs mounted outside \
         /sys (mount -t bpf bpf DIR, before `ip netns exec`)",
        .pin_dir.display(),
        .pin_dir_per_netns.display()
    )]
    IpNetnsExec {
        /// The network namespace's name.
        netns: String,
        /// The pin directory.
        pin_dir: PathBuf,
        /// The pin directory to give under `nsenter`, apart from other namespaces'.
        pin_dir_per_netns: PathBuf,
    },
    /// bpffs would be mounted in a mount namespace that is not PID 1's.
    #[error(
        "/sys/fs/bpf is not a bpffs here, and this process runs in a mount namespace of its own \
         (not PID 1's): a bpffs mounted for {} would vanish with that namespace, and with it the \
         pins and the XDP program. Mount bpffs on /sys/fs/bpf where the host sees it \
         (nsenter --mount=/proc/1/ns/mnt mount -t bpf bpf /sys/fs/bpf), or give --pin-dir on a \
         bpffs that outlives this namespace",
        .pin_dir.display()
    )]
    OwnMountNamespace {
        /// The pin directory.
        pin_dir: PathBuf,
    },
}

/// Refuses `pin_dir` when its pins would not outlive this process's mount namespace.
/// `will_mount` says that the caller is about to mount bpffs on /sys/fs/bpf for it.
pub fn refuse_transient(pin_dir: &Path, will_mount: bool) -> Result<(), TransientPins> {
    if pin_dir.starts_with("/sys") {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if let Some(netns) = ip_netns_exec_sysfs(&mountinfo) {
            if is_our_netns(&netns) {
                return Err(TransientPins::IpNetnsExec {
                    pin_dir_per_netns: pin_dir_per_netns(pin_dir, &netns),
                    netns,
                    pin_dir: pin_dir.to_owned(),
                });
            }
        }
    }
    // Unknown (PID 1's namespace unreadable, as in some sandboxes) is not refused.
    if will_mount && same_namespace_as_pid_1() == Some(false) {
        return Err(TransientPins::OwnMountNamespace {
            pin_dir: pin_dir.to_owned(),
        });
    }
    Ok(())
}

/// `pin_dir` with the namespace's name appended (`/sys/fs/bpf/xlb-NS`), unless its name has it
/// already.
fn pin_dir_per_netns(pin_dir: &Path, netns: &str) -> PathBuf {
    let name = pin_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == netns || name.ends_with(&format!("-{netns}")) {
        return pin_dir.to_owned();
    }
    pin_dir.with_file_name(format!("{name}-{netns}"))
}

/// The network namespace whose name `ip netns exec` gave as the source of the sysfs on /sys,
/// from a `/proc/PID/mountinfo`: `None` for the host's sysfs (source `sysfs` or `none`).
pub fn ip_netns_exec_sysfs(mountinfo: &str) -> Option<String> {
    // The last mount on /sys is the one in sight.
    let (fstype, source) = mountinfo
        .lines()
        .rev()
        .filter_map(parse_line)
        .find(|mount| mount.point == "/sys")
        .map(|mount| (mount.fstype, mount.source))?;
    let named = fstype == "sysfs"
        && !matches!(source.as_str(), "sysfs" | "none" | "")
        && !source.contains('/');
    named.then_some(source)
}

/// One line of mountinfo, the fields we read.
struct Mount {
    point: String,
    fstype: String,
    source: String,
}

/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let point = before.split(' ').nth(4)?;
    let mut after = after.split(' ');
    Some(Mount {
        point: unescape(point),
        fstype: unescape(after.next()?),
        source: unescape(after.next()?),
    })
}

/// Undoes mountinfo's octal escapes of space, tab, newline and backslash (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `/run/netns/NAME` is the network namespace this process is in (so that a sysfs
/// source that merely looks like a name is not taken for one).
fn is_our_netns(name: &str) -> bool {
    let ours = std::fs::metadata("/proc/self/ns/net");
    let named = std::fs::metadata(Path::new(NETNS_RUN_DIR).join(name));
    match (ours, named) {
        (Ok(ours), Ok(named)) => ours.dev() == named.dev() && ours.ino() == named.ino(),
        _ => false,
    }
}

/// Whether this process shares PID 1's mount namespace; `None` when PID 1's cannot be read.
fn same_namespace_as_pid_1() -> Option<bool> {
    let ours = std::fs::metadata("/proc/self/ns/mnt").ok()?;
    let init = std::fs::metadata("/proc/1/ns/mnt").ok()?;
    Some(ours.dev() == init.dev() && ours.ino() == init.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's mounts, as systemd leaves them.
    const HOST: &str = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 22 0:30 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:14 - bpf bpf rw,mode=700
1 0 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
";

    #[test]
    fn the_hosts_sysfs_is_not_taken_for_ip_netns_execs() {
        assert_eq!(ip_netns_exec_sysfs(HOST), None);
        assert_eq!(ip_netns_exec_sysfs(""), None);
    }

    #[test]
    fn the_sysfs_that_ip_netns_exec_mounts_is_recognised_by_its_source() {
        // `ip netns exec lb CMD`: the host's /sys, then a fresh one over it named after the
        // network namespace.
        let exec = format!(
            "{HOST}52 49 0:41 / /sys rw,relatime - sysfs lb rw\n\
             60 52 0:50 / /sys/fs/bpf rw,relatime - bpf bpf rw\n"
        );
        assert_eq!(ip_netns_exec_sysfs(&exec).as_deref(), Some("lb"));
    }

    #[test]
    fn a_sysfs_mounted_from_a_path_is_not_a_network_namespace() {
        let other = format!("{HOST}52 49 0:41 / /sys rw,relatime - sysfs /dev/fake rw\n");
        assert_eq!(ip_netns_exec_sysfs(&other), None);
    }

    #[test]
    fn the_fix_pins_apart_from_other_namespaces() {
        assert_eq!(
            pin_dir_per_netns(Path::new("/sys/fs/bpf/xlb"), "lb"),
            Path::new("/sys/fs/bpf/xlb-lb")
        );
        assert_eq!(
            pin_dir_per_netns(Path::new("/sys/fs/bpf/xlb-decap-rs1"), "rs1"),
            Path::new("/sys/fs/bpf/xlb-decap-rs1")
        );
        assert_eq!(
            pin_dir_per_netns(Path::new("/sys/fs/bpf/rs1"), "rs1"),
            Path::new("/sys/fs/bpf/rs1")
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/tmp/a\040b\134c"), r"/tmp/a b\c");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
    }

    #[test]
    fn a_pin_directory_outside_sys_is_never_refused_for_ip_netns_exec() {
        // The tests' daemons pin on a bpffs mounted under /tmp before `ip netns exec`.
        assert_eq!(
            refuse_transient(Path::new("/tmp/lab/bpffs/xlb"), false),
            Ok(())
        );
    }
}
