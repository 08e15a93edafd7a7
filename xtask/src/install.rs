//! `cargo xtask install`, `uninstall` and `deb`: xlb as a system service.
//!
//! What is installed, and where, for a prefix P (default /usr/local):
//!
//! | file | from | to |
//! | --- | --- | --- |
//! | xlbd, xlbadm | the release build | P/bin |
//! | xlb-realserver, xlb-vrrp-check, xlb-bird-health | scripts/ | P/bin |
//! | xlb.toml (never overwritten) | examples/ | SYSCONF/xlb/xlb.toml |
//! | xlbd's options (never overwritten) | packaging/xlb.default | SYSCONF/default/xlb |
//! | the systemd unit | packaging/xlb.service, its paths rewritten | UNITS/xlb.service |
//!
//! SYSCONF is /etc for the prefixes /usr and /usr/local, else P/etc; UNITS is P/lib/systemd/system
//! (systemd reads /usr/lib/… and /usr/local/lib/… by itself). `--destdir D` stages the same files
//! under D, with the unit naming the paths they will have once D's tree is copied to /, as make's
//! DESTDIR does. packaging/xlb.service is written for the prefix /usr, as the Debian package
//! installs it; other prefixes get its paths rewritten.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::setup;

/// The unit's name.
pub const UNIT: &str = "xlb.service";

/// cargo-deb, the Debian packager, at the version `cargo xtask deb` was written against.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Where the files go at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Executables.
    pub bindir: PathBuf,
    /// Configuration (`/etc`).
    pub sysconfdir: PathBuf,
    /// The systemd unit.
    pub unitdir: PathBuf,
}

impl Layout {
    /// The layout for `prefix` (absolute).
    pub fn for_prefix(prefix: &Path) -> Result<Self> {
        if !prefix.is_absolute() {
            bail!(
                "--prefix must be an absolute path (where the files are at run time), not {}",
                prefix.display()
            );
        }
        let system = prefix == Path::new("/usr") || prefix == Path::new("/usr/local");
        Ok(Self {
            bindir: prefix.join("bin"),
            sysconfdir: if system {
                PathBuf::from("/etc")
            } else {
                prefix.join("etc")
            },
            unitdir: prefix.join("lib/systemd/system"),
        })
    }

    /// Every file: (where it goes, what it is).
    pub fn files(&self) -> Vec<(PathBuf, Source)> {
        vec![
            (self.bindir.join("xlbd"), Source::Built("xlbd")),
            (self.bindir.join("xlbadm"), Source::Built("xlbadm")),
            (
                self.bindir.join("xlb-realserver"),
                Source::Script("scripts/xlb-realserver"),
            ),
            (
                self.bindir.join("xlb-vrrp-check"),
                Source::Script("scripts/xlb-vrrp-check"),
            ),
            (
                self.bindir.join("xlb-bird-health"),
                Source::Script("scripts/bird/xlb-bird-health"),
            ),
            (
                self.sysconfdir.join("xlb/xlb.toml"),
                Source::Config("examples/xlb.toml"),
            ),
            (
                self.sysconfdir.join("default/xlb"),
                Source::Config("packaging/xlb.default"),
            ),
            (self.unitdir.join(UNIT), Source::Unit),
        ]
    }

    /// The unit for this layout: packaging/xlb.service (written for the prefix /usr) with its
    /// paths moved.
    pub fn unit(&self, template: &str) -> String {
        template
            .replace("/usr/bin/", &format!("{}/", self.bindir.display()))
            .replace("/etc/", &format!("{}/", self.sysconfdir.display()))
    }
}

/// What an installed file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A binary of the build (replaced).
    Built(&'static str),
    /// An executable script of the checkout (replaced).
    Script(&'static str),
    /// A configuration file of the checkout, installed only where there is none.
    Config(&'static str),
    /// The systemd unit, rendered for the layout (replaced).
    Unit,
}

/// Options shared by install and uninstall.
pub struct Target {
    /// Where the files are at run time.
    pub prefix: PathBuf,
    /// Where the tree is staged instead of /, if anywhere.
    pub destdir: Option<PathBuf>,
}

impl Target {
    fn layout(&self) -> Result<Layout> {
        Layout::for_prefix(&self.prefix)
    }

    /// Where `path` (a run-time path) is written.
    fn staged(&self, path: &Path) -> PathBuf {
        match &self.destdir {
            Some(dest) => dest.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_owned(),
        }
    }

    /// Whether this installs into the running system (so that systemd should hear of it).
    fn live(&self) -> bool {
        self.destdir.is_none() && Path::new("/run/systemd/system").exists()
    }
}

/// `cargo xtask install`: builds xlbd and xlbadm, then installs every file of [`Layout::files`].
pub fn install(target: &Target, debug: bool) -> Result<()> {
    let layout = target.layout()?;
    setup::toolchain()?;
    crate::cargo(&["build", "--bin", "xlbd", "--bin", "xlbadm"], !debug)?;
    let root = setup::workspace_root()?;
    let built = setup::target_dir()?.join(if debug { "debug" } else { "release" });
    let template = read(&root.join("packaging").join(UNIT))?;
    for (path, source) in layout.files() {
        let dest = target.staged(&path);
        match source {
            Source::Built(name) => put_file(&built.join(name), &dest, 0o755)?,
            Source::Script(file) => put_file(&root.join(file), &dest, 0o755)?,
            Source::Config(file) => {
                if dest.exists() {
                    println!(
                        "kept      {} (it exists; the example is {file})",
                        dest.display()
                    );
                    continue;
                }
                put_file(&root.join(file), &dest, 0o644)?;
            }
            Source::Unit => put(layout.unit(&template).as_bytes(), &dest, 0o644)?,
        }
        println!("installed {}", dest.display());
    }
    if target.live() {
        setup::run(
            Command::new("systemctl").arg("daemon-reload"),
            "systemctl daemon-reload",
        )?;
    }
    let options = layout.sysconfdir.join("default/xlb");
    let unit = layout.unitdir.join(UNIT);
    println!(
        "\nNext: name the interfaces in XLBD_OPTS in {}, describe the services in {}, then \
         `systemctl enable --now xlb`{}.",
        options.display(),
        layout.sysconfdir.join("xlb/xlb.toml").display(),
        if Layout::for_prefix(Path::new("/usr/local"))? == layout
            || Layout::for_prefix(Path::new("/usr"))? == layout
        {
            String::new()
        } else {
            format!(
                " (systemd does not look in {}: `systemctl link {}` first)",
                layout.unitdir.display(),
                unit.display()
            )
        }
    );
    Ok(())
}

/// `cargo xtask uninstall`: removes the binaries, the script and the unit; keeps the
/// configuration files, as `apt remove` does. Refuses while the service is running or enabled.
pub fn uninstall(target: &Target) -> Result<()> {
    let layout = target.layout()?;
    if target.live() {
        let state = |verb: &str| {
            Command::new("systemctl")
                .args([verb, "--quiet", UNIT])
                .status()
                .is_ok_and(|s| s.success())
        };
        if state("is-active") || state("is-enabled") {
            bail!(
                "{UNIT} is running or enabled: `systemctl disable --now xlb` first (the balancer \
                 keeps forwarding after xlbd stops; `rm -r /sys/fs/bpf/xlb` detaches it)"
            );
        }
    }
    for (path, source) in layout.files() {
        let dest = target.staged(&path);
        if let Source::Config(_) = source {
            if dest.exists() {
                println!("kept      {} (configuration)", dest.display());
            }
            continue;
        }
        match std::fs::remove_file(&dest) {
            Ok(()) => println!("removed   {}", dest.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dest.display())),
        }
    }
    if target.live() {
        setup::run(
            Command::new("systemctl").arg("daemon-reload"),
            "systemctl daemon-reload",
        )?;
    }
    Ok(())
}

/// `cargo xtask deb`: the Debian package, by cargo-deb (installed first when missing) from
/// lb-userspace's `[package.metadata.deb]`. Returns the package's path.
pub fn deb(debug: bool) -> Result<PathBuf> {
    setup::toolchain()?;
    cargo_deb()?;
    // Built as `install` builds them (cargo-deb's own build, of lb-userspace alone, would resolve
    // the dependencies' features apart from the workspace's and build them all a second time).
    crate::cargo(&["build", "--bin", "xlbd", "--bin", "xlbadm"], !debug)?;
    let root = setup::workspace_root()?;
    let out = setup::target_dir()?.join("debian");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["deb", "-p", "lb-userspace", "--no-build", "--output"])
        .arg(&out)
        .current_dir(&root);
    if debug {
        // Compressed less: xz's best takes more than a minute on a busy 2-core machine.
        cmd.args(["--profile", "dev", "--fast"]);
    }
    let before = std::time::SystemTime::now();
    setup::run(&mut cmd, "building the Debian package (cargo deb)")?;
    // The package just written: cargo-deb names it NAME_VERSION-REVISION_ARCH.deb.
    let newest = std::fs::read_dir(&out)
        .with_context(|| format!("reading {}", out.display()))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".deb"))
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .filter(|(modified, _)| *modified >= before)
        .max()
        .map(|(_, path)| path)
        .with_context(|| format!("cargo deb wrote no package in {}", out.display()))?;
    println!("xtask: {}", newest.display());
    Ok(newest)
}

/// cargo-deb, installed from crates.io unless a cargo-deb is on PATH.
fn cargo_deb() -> Result<()> {
    let there = Command::new("cargo-deb")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if there {
        return Ok(());
    }
    setup::run(
        Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ]),
        "installing cargo-deb (about a minute)",
    )
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn put_file(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    put(&bytes, to, mode)
}

/// Writes `bytes` to `to` with `mode` through a temporary file in the same directory renamed over
/// it, so that a running xlbd's executable is replaced rather than rewritten (which the kernel
/// refuses: "text file busy") and no half-written file is ever in place.
fn put(bytes: &[u8], to: &Path, mode: u32) -> Result<()> {
    let dir = to
        .parent()
        .with_context(|| format!("{} has no directory", to.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.xtask-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&tmp, to)
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = include_str!("../../packaging/xlb.service");

    /// The absolute paths a unit names (in its commands and files, comments left out).
    fn paths(unit: &str) -> Vec<String> {
        unit.lines()
            .filter(|line| !line.starts_with('#'))
            .flat_map(|line| line.split(['=', ' ', '\'']))
            .map(|word| word.trim_start_matches(['+', '-']))
            .filter(|word| word.starts_with('/'))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_template_is_the_unit_for_the_prefix_usr() {
        let usr = Layout::for_prefix(Path::new("/usr")).expect("layout");
        assert_eq!(usr.unit(TEMPLATE), TEMPLATE);
        assert_eq!(usr.sysconfdir, Path::new("/etc"));
        assert_eq!(usr.unitdir, Path::new("/usr/lib/systemd/system"));
    }

    #[test]
    fn usr_local_keeps_the_configuration_in_etc() {
        let local = Layout::for_prefix(Path::new("/usr/local")).expect("layout");
        assert_eq!(local.bindir, Path::new("/usr/local/bin"));
        assert_eq!(local.sysconfdir, Path::new("/etc"));
        assert!(local
            .unit(TEMPLATE)
            .contains("ExecStart=/usr/local/bin/xlbd --config /etc/xlb/xlb.toml $XLBD_OPTS"));
    }

    #[test]
    fn another_prefix_holds_everything_and_the_unit_names_only_its_files() {
        let layout = Layout::for_prefix(Path::new("/opt/xlb")).expect("layout");
        let unit = layout.unit(TEMPLATE);
        let installed: Vec<PathBuf> = layout.files().into_iter().map(|(p, _)| p).collect();
        for (path, _) in layout.files() {
            assert!(path.starts_with("/opt/xlb"), "{}", path.display());
        }
        // Every file of ours the unit names is one that is installed; the rest is the system's.
        let system = ["/bin/sh", "/bin/kill", "/sys/fs/bpf"];
        for path in paths(&unit) {
            assert!(
                system.contains(&path.as_str()) || installed.contains(&PathBuf::from(&path)),
                "the unit names {path}, which the install does not put there"
            );
        }
        assert!(paths(&unit).contains(&"/opt/xlb/bin/xlbd".to_owned()));
        assert!(paths(&unit).contains(&"/opt/xlb/etc/default/xlb".to_owned()));
    }

    #[test]
    fn a_relative_prefix_is_refused() {
        let e = Layout::for_prefix(Path::new("stage")).expect_err("relative");
        assert!(e.to_string().contains("absolute path"), "{e}");
    }

    #[test]
    fn destdir_stages_the_run_time_paths() {
        let target = Target {
            prefix: PathBuf::from("/usr/local"),
            destdir: Some(PathBuf::from("/tmp/stage")),
        };
        assert_eq!(
            target.staged(Path::new("/etc/xlb/xlb.toml")),
            Path::new("/tmp/stage/etc/xlb/xlb.toml")
        );
        assert!(!target.live());
    }
}
