//! xlb in the lab: xlbd in native XDP mode on the balancer's eth0, its four services set up with
//! xlbadm, and the pass-all program a veth needs on its peer to deliver XDP_TX'd frames in native
//! mode. Attached only while xlb is measured, so that the proxies' packets meet no XDP program;
//! dropping it stops xlbd (which detaches, `--detach-on-exit`), removes what it pinned and the
//! peer's program.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::programs::XdpMode;
use lb_userspace::dataplane::{Dataplane, LoadOptions};
use xlb_tests::netns::run_sh;

use crate::lab::{binary, real_addr, Lab, REALS, VIPS};

/// How an xlb service forwards to its real servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Direct routing: only the MAC addresses change (`-g`).
    DirectRoute,
    /// IP-in-IP (`-i`), stripped by xlb's decapsulator on the real servers.
    Tunnel,
}

impl Forwarding {
    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::DirectRoute => "xlb direct routing",
            Self::Tunnel => "xlb IP-in-IP",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Self::DirectRoute => "-g",
            Self::Tunnel => "-i",
        }
    }
}

/// The VIP of the service that forwards `forwarding` to `reals` real servers (1 or all).
pub fn vip(forwarding: Forwarding, reals: usize) -> std::net::Ipv4Addr {
    match (forwarding, reals == 1) {
        (Forwarding::DirectRoute, true) => VIPS[0],
        (Forwarding::Tunnel, true) => VIPS[1],
        (Forwarding::DirectRoute, false) => VIPS[2],
        (Forwarding::Tunnel, false) => VIPS[3],
    }
}

/// The program a veth needs on its peer to take XDP_TX'd frames in native mode, attached to the
/// balancer's bridge port: xlb's own with no service, which passes everything. Detached when
/// dropped.
pub fn peer_pass_all(lab: &Lab) -> anyhow::Result<Dataplane> {
    let mut peer = Dataplane::load(&LoadOptions {
        max_services: Some(1),
        max_connections: Some(1024),
        ..LoadOptions::default()
    })
    .context("loading the peer's pass-all program")?;
    lab.switch
        .enter(|| peer.attach("plb", XdpMode::Driver))
        .context("attaching the pass-all program to the balancer's bridge port")?;
    Ok(peer)
}

/// A running xlbd with the lab's services, and the peer's pass-all program.
pub struct Xlb<'a> {
    lab: &'a Lab,
    child: Option<Child>,
    _peer: Dataplane,
}

impl<'a> Xlb<'a> {
    /// Starts xlbd on the balancer's eth0 in native mode and sets up the four services.
    pub fn start(lab: &'a Lab) -> anyhow::Result<Self> {
        let peer = peer_pass_all(lab)?;
        let dir = Self::dir(lab);
        std::fs::create_dir_all(&dir).context("xlbd's directory")?;
        let _ = std::fs::remove_file(dir.join("state.json"));
        let _ = std::fs::remove_file(Self::socket(lab));
        let log = std::fs::File::create(dir.join("xlbd.log")).context("xlbd's log")?;
        let child = lab
            .balancer
            .command(binary("xlbd").to_str().context("xlbd's path")?)
            .args([
                "--iface",
                "eth0",
                "--xdp-mode",
                "native",
                "--detach-on-exit",
            ])
            .args(["--report-every", "0", "--metrics-listen", "off"])
            // The VIPs are the balancer's addresses for good here (nothing moves them): no
            // waiting for them to leave on exit.
            .args(["--detach-wait-vip", "0"])
            .arg("--config")
            .arg(dir.join("none.toml"))
            .arg("--socket")
            .arg(Self::socket(lab))
            .arg("--pin-dir")
            .arg(Self::pin_dir(lab))
            .arg("--state-file")
            .arg(dir.join("state.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting xlbd")?;
        let xlb = Self {
            lab,
            child: Some(child),
            _peer: peer,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Self::socket(lab).exists() {
            if Instant::now() > deadline {
                bail!("xlbd did not open its socket; its log:\n{}", xlb.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for forwarding in [Forwarding::DirectRoute, Forwarding::Tunnel] {
            for reals in [1, REALS] {
                let service = format!("{}:80", vip(forwarding, reals));
                xlb.adm(&["-A", "-t", &service, "-s", "mh"])?;
                for i in 0..reals {
                    let real = format!("{}:80", real_addr(i));
                    xlb.adm(&["-a", "-t", &service, "-r", &real, forwarding.flag()])?;
                }
            }
        }
        Ok(xlb)
    }

    fn dir(lab: &Lab) -> PathBuf {
        lab.dir.join("xlbd")
    }

    fn socket(lab: &Lab) -> PathBuf {
        Self::dir(lab).join("xlb.sock")
    }

    fn pin_dir(lab: &Lab) -> PathBuf {
        lab.dir.join("bpffs/xlb")
    }

    /// What xlbd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(Self::dir(self.lab).join("xlbd.log")).unwrap_or_default()
    }

    /// Runs xlbadm against this xlbd; its output.
    pub fn adm(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(binary("xlbadm"))
            .args(args)
            .env("XLB_SOCKET", Self::socket(self.lab))
            .output()
            .context("running xlbadm")?;
        if !out.status.success() {
            bail!(
                "xlbadm {} failed: {}{}\nxlbd's log:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Xlb<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on the pid of a child we own and have not waited for.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Dataplane::remove_pins(&Self::pin_dir(self.lab));
        let _ = run_sh(&format!(
            "rm -rf {} {}",
            Self::pin_dir(self.lab).display(),
            Self::dir(self.lab).display()
        ));
    }
}
