//! The user-space balancers xlb is measured against, each on a port of its own on the balancer's
//! address and forwarding to the three real servers round robin: HAProxy in TCP mode, pen, and
//! nginx's stream proxy. Their configurations are generated into the lab's directory; each runs
//! in the foreground as a child of the bench, inside the balancer's namespace, with its own
//! default number of threads or workers (HAProxy and nginx one per CPU, pen single-threaded).

use std::{
    path::Path,
    process::{Child, Stdio},
};

use anyhow::Context as _;
use xlb_tests::netns::Netns;

use crate::lab::{real_addr, BALANCER, REALS};

/// Where nginx's stream module lives on Debian (package libnginx-mod-stream).
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// A user-space TCP proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    /// HAProxy, `mode tcp`, `balance roundrobin`.
    Haproxy,
    /// pen, `-r` (round robin without client tracking).
    Pen,
    /// nginx's `stream` module, `proxy_pass` to an upstream of the three servers.
    NginxStream,
}

impl Proxy {
    /// All of them, in the table's order.
    pub const ALL: [Self; 3] = [Self::Haproxy, Self::Pen, Self::NginxStream];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Haproxy => "HAProxy (TCP mode)",
            Self::Pen => "pen",
            Self::NginxStream => "nginx stream proxy",
        }
    }

    /// The port it listens on, on the balancer's address.
    pub fn port(self) -> u16 {
        match self {
            Self::Haproxy => 8001,
            Self::Pen => 8002,
            Self::NginxStream => 8003,
        }
    }

    /// Writes its configuration under `dir` and starts it in `ns`.
    pub fn start(self, ns: &Netns, dir: &Path) -> anyhow::Result<Child> {
        let dir = dir.join(match self {
            Self::Haproxy => "haproxy",
            Self::Pen => "pen",
            Self::NginxStream => "nginx-stream",
        });
        std::fs::create_dir_all(&dir).context("a proxy's directory")?;
        let listen = format!("{BALANCER}:{}", self.port());
        let reals: Vec<String> = (0..REALS).map(|i| format!("{}:80", real_addr(i))).collect();
        let mut cmd = match self {
            Self::Haproxy => {
                let config = dir.join("haproxy.cfg");
                std::fs::write(&config, haproxy_config(&listen, &reals))
                    .context("writing haproxy.cfg")?;
                let mut cmd = ns.command("haproxy");
                cmd.arg("-db").arg("-f").arg(config);
                cmd
            }
            Self::Pen => {
                let mut cmd = ns.command("pen");
                cmd.args(["-f", "-r", "-x", "4000", "-c", "4000", "-p"])
                    .arg(dir.join("pen.pid"))
                    .arg(&listen)
                    .args(&reals);
                cmd
            }
            Self::NginxStream => {
                let config = dir.join("nginx.conf");
                std::fs::write(&config, nginx_stream_config(&dir, &listen, &reals))
                    .context("writing the stream proxy's nginx.conf")?;
                let mut cmd = ns.command("nginx");
                cmd.arg("-p")
                    .arg(&dir)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-c")
                    .arg(config);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.name()))
    }
}

fn haproxy_config(listen: &str, reals: &[String]) -> String {
    let servers: String = reals
        .iter()
        .enumerate()
        .map(|(i, r)| format!("  server rs{} {r}\n", i + 1))
        .collect();
    format!(
        "global\n  maxconn 4000\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend e2e\n  bind {listen}\n  default_backend reals\n\
         backend reals\n  balance roundrobin\n{servers}"
    )
}

fn nginx_stream_config(dir: &Path, listen: &str, reals: &[String]) -> String {
    let servers: String = reals.iter().map(|r| format!("    server {r};\n")).collect();
    let dir = dir.display();
    format!(
        "load_module {NGINX_STREAM_MODULE};\n\
         worker_processes auto;\n\
         worker_rlimit_nofile 16384;\n\
         daemon off;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         stream {{\n\
         \x20 upstream reals {{\n{servers}  }}\n\
         \x20 server {{ listen {listen} backlog=4096; proxy_pass reals; }}\n\
         }}\n"
    )
}
