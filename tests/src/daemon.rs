//! Running xlbd (and xlbadm against it) inside a test namespace, with its own socket, state file
//! and a bpffs of its own for the pins.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use lb_userspace::dataplane::Dataplane;

use crate::netns::{run_sh, sh, Netns};

/// The workspace's binaries: next to this executable (a benchmark in target/release), or next
/// to its directory (a test in target/debug/deps).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let own = exe.parent().expect("executable directory");
    let dir = if own.join(name).exists() {
        own
    } else {
        own.parent().expect("target directory")
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo xtask test does)",
        path.display()
    );
    path
}

/// A running xlbd with its own socket, pins and state file; stopped and unpinned when dropped.
pub struct Daemon<'a> {
    ns: &'a Netns,
    dir: PathBuf,
    /// Where its program, maps and links are pinned.
    pub pin_dir: PathBuf,
    child: Option<Child>,
    /// What runs xlbd inside the namespace (such as setpriv with its options), if anything.
    wrapper: Vec<String>,
    /// The interface it balances on.
    iface: String,
}

impl<'a> Daemon<'a> {
    /// Starts xlbd on the namespace's eth0 (generic mode) with no configuration.
    pub fn start(ns: &'a Netns) -> Self {
        Self::start_with_config(ns, None)
    }

    /// Starts xlbd with no configuration and extra arguments.
    pub fn start_with_args(ns: &'a Netns, extra: &[&str]) -> Self {
        let mut daemon = Self::prepare(ns, None);
        daemon.spawn_with(extra);
        daemon
    }

    /// Starts xlbd on `iface` (generic mode) with no configuration and extra arguments.
    pub fn start_on(ns: &'a Netns, iface: &str, extra: &[&str]) -> Self {
        let mut daemon = Self::prepare(ns, None);
        daemon.iface = iface.to_owned();
        daemon.spawn_with(extra);
        daemon
    }

    /// Starts xlbd with `config` as its configuration file (none when `None`).
    pub fn start_with_config(ns: &'a Netns, config: Option<&str>) -> Self {
        let mut daemon = Self::prepare(ns, config);
        daemon.spawn();
        daemon
    }

    /// Starts xlbd as [`Daemon::start`] does, run by `wrapper` (a program and its options that
    /// ends by running its arguments, such as `setpriv … --`).
    pub fn start_wrapped(ns: &'a Netns, wrapper: &[&str]) -> Self {
        let mut daemon = Self::wrapped(ns, wrapper);
        daemon.spawn();
        daemon
    }

    /// Its directory and bpffs, to be run by `wrapper` ([`Daemon::start_wrapped`]), not started
    /// yet (for [`Daemon::start_refused`]).
    pub fn wrapped(ns: &'a Netns, wrapper: &[&str]) -> Self {
        let mut daemon = Self::prepare(ns, None);
        daemon.wrapper = wrapper.iter().map(|w| (*w).to_owned()).collect();
        daemon
    }

    /// The process id of the running xlbd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("xlbd is running").id()
    }

    /// Its directory, configuration and bpffs, without the process.
    fn prepare(ns: &'a Netns, config: Option<&str>) -> Self {
        let dir = PathBuf::from(format!("/tmp/{}-xlbd", ns.name()));
        std::fs::create_dir_all(&dir).expect("daemon directory");
        match config {
            Some(text) => {
                std::fs::write(dir.join("config.toml"), text).expect("write the configuration")
            }
            // A file left by an earlier run of a test in the same namespace name is not this
            // daemon's.
            None => {
                let _ = std::fs::remove_file(dir.join("config.toml"));
            }
        }
        // `ip netns exec` gives the daemon a mount namespace of its own with a fresh /sys, so pins
        // under its /sys/fs/bpf would vanish with it: pin on a bpffs mounted here instead.
        let bpffs = dir.join("bpffs");
        std::fs::create_dir_all(&bpffs).expect("bpffs mount point");
        sh(&format!("mount -t bpf bpf {}", bpffs.display()));
        let pin_dir = bpffs.join("xlb");
        Self {
            ns,
            dir,
            pin_dir,
            child: None,
            wrapper: Vec::new(),
            iface: "eth0".to_owned(),
        }
    }

    /// Its control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("xlb.sock")
    }

    /// Its state file.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Its configuration file (which need not exist).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Replaces its configuration file (to be reloaded, or read at the next start).
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write the configuration");
    }

    /// Sends `signal` (a libc signal number) to the running process.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("xlbd is running");
        // SAFETY: kill on the pid of a child we own, which has not been waited for.
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal}) of xlbd failed");
    }

    /// Starts the process (again).
    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    /// Starts the process (again) with extra arguments.
    pub fn spawn_with(&mut self, extra: &[&str]) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("xlbd.log"))
            .expect("log file");
        let child = self
            .command(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start xlbd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "xlbd did not open its socket; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process with extra arguments, expecting it to refuse to start; returns what
    /// it wrote on stderr.
    pub fn start_refused(&self, extra: &[&str]) -> String {
        let out = self.command(extra).output().expect("run xlbd");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "xlbd started: {stderr}");
        stderr
    }

    fn command(&self, extra: &[&str]) -> Command {
        let xlbd = binary("xlbd");
        let xlbd = xlbd.to_str().expect("path");
        let mut command = match self.wrapper.split_first() {
            Some((program, options)) => {
                let mut command = self.ns.command(program);
                command.args(options).arg(xlbd);
                command
            }
            None => self.ns.command(xlbd),
        };
        command
            .args([
                "--iface",
                &self.iface,
                "--xdp-mode",
                "generic",
                "--report-every",
                "0",
            ])
            .arg("--config")
            .arg(self.config_path())
            .arg("--socket")
            .arg(self.socket())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-file")
            .arg(self.state_file())
            .args(extra);
        command
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("xlbd.log")).unwrap_or_default()
    }

    /// SIGTERM, and waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on the pid of a child we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().expect("wait for xlbd");
            assert!(
                status.success(),
                "xlbd exited with {status}; log:\n{}",
                self.log()
            );
        }
    }

    /// Runs xlbadm against it.
    pub fn adm(&self, args: &[&str]) -> Output {
        Command::new(binary("xlbadm"))
            .args(args)
            .env("XLB_SOCKET", self.socket())
            .output()
            .expect("run xlbadm")
    }

    /// Runs xlbadm against it and panics when it fails.
    pub fn adm_ok(&self, args: &[&str]) -> String {
        let out = self.adm(args);
        assert!(
            out.status.success(),
            "xlbadm {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Dataplane::remove_pins(&self.pin_dir);
        let _ = run_sh(&format!("umount {}/bpffs", self.dir.display()));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
