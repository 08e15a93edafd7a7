//! `cargo xtask install`, `uninstall` and `deb`: every file lands where the systemd unit expects
//! it, the unit passes `systemd-analyze verify`, an existing configuration is never overwritten,
//! and the Debian package holds the same files with the configuration as conffiles.
//!
//! They run the xtask binary as `cargo xtask` built it (target/debug/xtask), with `--debug` so
//! that no release build is needed; root because systemd may have to be installed first.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use xlb_tests::{daemon::binary, root};

/// The tests build through cargo and share target/: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A directory removed when the test ends, however it ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xlb-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn xtask(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("900")
        .arg(binary("xtask"))
        .args(args)
        .output()
        .expect("run the xtask binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "cargo xtask {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

/// Installs the Debian package `package` unless the command `command` is there.
fn need(command: &str, package: &str) {
    let there = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|out| out.status.success());
    if there {
        return;
    }
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "--no-install-recommends", package],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("run apt-get");
        assert!(status.success(), "apt-get {} failed", args.join(" "));
    }
}

/// `systemd-analyze verify UNIT`: it must succeed and say nothing (it only warns, on stderr,
/// about an unknown key or a bad value).
fn verify(unit: &Path) {
    need("systemd-analyze", "systemd");
    let out: Output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {} ({}):\n{said}",
        unit.display(),
        out.status
    );
}

/// The value of the unit's first `KEY=` line.
fn key<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}=:\n{unit}"))
}

/// The absolute paths the unit's settings name (comments left out), with the prefixes of
/// systemd's `-` (optional) and `+` (privileged) taken off.
fn paths(unit: &str) -> Vec<PathBuf> {
    unit.lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| line.split(['=', ' ', '\'']))
        .map(|word| word.trim_start_matches(['+', '-']))
        .filter(|word| word.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// What the unit runs and reads that is not xlb's own: the system's.
const SYSTEM_PATHS: [&str; 3] = ["/bin/sh", "/bin/kill", "/sys/fs/bpf"];

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn install_into_a_prefix_puts_every_file_where_the_unit_expects_it_and_the_unit_verifies() {
    root::require();
    let _serial = serial();
    let tmp = TempDir::new("install");
    let prefix = tmp.0.join("opt");
    let prefix_arg = prefix.to_str().expect("a UTF-8 path");
    xtask(&["install", "--debug", "--prefix", prefix_arg]);

    let unit_path = prefix.join("lib/systemd/system/xlb.service");
    let unit = std::fs::read_to_string(&unit_path).expect("the unit is installed");
    let named = paths(&unit);
    for path in &named {
        assert!(
            SYSTEM_PATHS.contains(&path.to_str().unwrap_or_default()) || path.starts_with(&prefix),
            "the unit names {} outside the prefix:\n{unit}",
            path.display()
        );
        assert!(
            path.exists(),
            "the unit names {}, which the install did not put there",
            path.display()
        );
    }
    let xlbd = prefix.join("bin/xlbd");
    assert!(key(&unit, "ExecStart").starts_with(&format!("{} ", xlbd.display())));
    for exe in [
        "xlbd",
        "xlbadm",
        "xlb-realserver",
        "xlb-vrrp-check",
        "xlb-bird-health",
    ] {
        assert!(is_executable(&prefix.join("bin").join(exe)), "{exe}");
    }
    let config = prefix.join("etc/xlb/xlb.toml");
    let options = prefix.join("etc/default/xlb");
    assert!(
        named.contains(&config) && named.contains(&options),
        "{unit}"
    );
    for must in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RuntimeDirectory=xlb",
        "After=network-online.target",
        "Wants=network-online.target",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_RAW",
    ] {
        assert!(unit.lines().any(|line| line == must), "no {must}:\n{unit}");
    }
    verify(&unit_path);
    // The example configuration is one xlbd accepts.
    let check = Command::new(&xlbd)
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run the installed xlbd");
    assert!(
        check.status.success(),
        "the installed example configuration is refused:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // A second install replaces the programs and keeps the operator's configuration.
    std::fs::write(&config, "# mine\n").expect("edit the configuration");
    std::fs::write(&options, "XLBD_OPTS=\"--iface eth9\"\n").expect("edit the options");
    let again = xtask(&["install", "--debug", "--prefix", prefix_arg]);
    assert!(
        again.contains(&format!("kept      {}", config.display())),
        "{again}"
    );
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        "# mine\n"
    );
    assert_eq!(
        std::fs::read_to_string(&options).expect("options"),
        "XLBD_OPTS=\"--iface eth9\"\n"
    );

    // Uninstall removes the programs and the unit, and keeps the configuration.
    xtask(&["uninstall", "--prefix", prefix_arg]);
    for gone in ["bin/xlbd", "bin/xlbadm", "bin/xlb-realserver"] {
        assert!(!prefix.join(gone).exists(), "{gone} is still there");
    }
    assert!(!unit_path.exists());
    assert!(config.exists() && options.exists());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn install_with_destdir_stages_the_files_at_their_run_time_paths() {
    root::require();
    let _serial = serial();
    let tmp = TempDir::new("destdir");
    let dest = tmp.0.to_str().expect("a UTF-8 path");
    xtask(&["install", "--debug", "--destdir", dest]);
    let unit = std::fs::read_to_string(tmp.0.join("usr/local/lib/systemd/system/xlb.service"))
        .expect("the unit is staged under the prefix /usr/local");
    // The unit names where the files will be once the tree is copied to /, and each is staged.
    assert!(
        key(&unit, "ExecStart").starts_with("/usr/local/bin/xlbd --config /etc/xlb/xlb.toml "),
        "{unit}"
    );
    for path in paths(&unit) {
        if SYSTEM_PATHS.contains(&path.to_str().unwrap_or_default()) {
            continue;
        }
        let staged = tmp.0.join(path.strip_prefix("/").expect("absolute"));
        assert!(staged.exists(), "{} is not staged", staged.display());
    }
    xtask(&["uninstall", "--destdir", dest]);
    assert!(!tmp.0.join("usr/local/bin/xlbd").exists());
    assert!(tmp.0.join("etc/xlb/xlb.toml").exists());
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_debian_package_holds_the_same_files_with_the_configuration_as_conffiles() {
    root::require();
    let _serial = serial();
    let out = xtask(&["deb", "--debug"]);
    let deb = out
        .lines()
        .filter_map(|line| line.strip_prefix("xtask: "))
        .find(|line| line.ends_with(".deb"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("cargo xtask deb named no package:\n{out}"));

    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .expect("run dpkg-deb -c");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in [
        "./usr/bin/xlbd",
        "./usr/bin/xlbadm",
        "./usr/bin/xlb-realserver",
        "./usr/bin/xlb-vrrp-check",
        "./usr/bin/xlb-bird-health",
        "./etc/xlb/xlb.toml",
        "./etc/default/xlb",
        "./usr/lib/systemd/system/xlb.service",
    ] {
        assert!(
            listing
                .lines()
                .any(|line| line.ends_with(&format!(" {file}"))),
            "the package has no {file}:\n{listing}"
        );
    }

    let tmp = TempDir::new("deb");
    let root_dir = tmp.0.join("root");
    let control = tmp.0.join("control");
    for (flag, dir) in [("-x", &root_dir), ("-e", &control)] {
        let status = Command::new("dpkg-deb")
            .arg(flag)
            .arg(&deb)
            .arg(dir)
            .status()
            .expect("run dpkg-deb");
        assert!(status.success(), "dpkg-deb {flag} failed");
    }
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    let mut conffiles: Vec<&str> = conffiles.lines().collect();
    conffiles.sort_unstable();
    assert_eq!(conffiles, ["/etc/default/xlb", "/etc/xlb/xlb.toml"]);
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(
        postinst.contains("try-restart xlb.service"),
        "an upgrade does not restart a running xlbd:\n{postinst}"
    );

    // The packaged unit names the packaged files; verified with its paths moved into the tree.
    let unit = std::fs::read_to_string(root_dir.join("usr/lib/systemd/system/xlb.service"))
        .expect("the packaged unit");
    assert!(key(&unit, "ExecStart").starts_with("/usr/bin/xlbd --config /etc/xlb/xlb.toml "));
    for path in paths(&unit) {
        if SYSTEM_PATHS.contains(&path.to_str().unwrap_or_default()) {
            continue;
        }
        let packaged = root_dir.join(path.strip_prefix("/").expect("absolute"));
        assert!(packaged.exists(), "the package has no {}", path.display());
    }
    let moved = unit
        .replace("/usr/bin/", &format!("{}/usr/bin/", root_dir.display()))
        .replace("/etc/", &format!("{}/etc/", root_dir.display()));
    let moved_path = tmp.0.join("xlb.service");
    std::fs::write(&moved_path, moved).expect("write the moved unit");
    verify(&moved_path);
}
