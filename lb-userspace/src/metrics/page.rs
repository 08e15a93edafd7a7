//! The status page, after HAProxy's stats page: one box per service that says at a glance
//! whether it is served (servers up of total, quorum, the sorry server when it is in use), how
//! it is checked, its traffic over the last minutes as small inline SVG charts, and a table of
//! its real servers with the reason a down server is down. Then the data path's drops and the
//! health engine's counters. Pure: HTML from a [`Snapshot`].

use std::{fmt::Write as _, net::SocketAddr};

use lb_common::GlobalStat;

use super::{
    history::Traffic,
    prometheus::{forwarding_label, protocol_label, real_up, sorted_services},
    Snapshot,
};
use crate::{
    state::health::{format_duration, Check, CheckOptions, HttpCheck, ServiceHealth},
    status::{RealListing, ServiceListing},
};

/// How often the page reloads itself, in seconds.
pub const REFRESH_SECS: u32 = 5;

/// The health state the runtime lists for the sorry server while it is in use.
const SORRY: &str = "sorry";

/// Text made safe for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = concat!(
    "body{font-family:sans-serif;margin:1em;background:#fafafa}",
    "h1{margin:0 0 .2em}p.sum{margin:0 0 1em;color:#555}",
    "section{background:#fff;border:1px solid #bbb;margin:0 0 1em;padding:.4em .8em}",
    "section.up{border-left:8px solid #3a3}section.degraded{border-left:8px solid #e90}",
    "section.down{border-left:8px solid #d22}section.sorry{border-left:8px solid #36c}",
    "section.empty{border-left:8px solid #999}",
    "h2{font-size:1.1em;margin:.2em 0}.badge{display:inline-block;padding:0 .4em;color:#fff;",
    "border-radius:3px;margin-right:.4em}.up .badge{background:#3a3}",
    ".degraded .badge{background:#e90}.down .badge{background:#d22}",
    ".sorry .badge{background:#36c}.empty .badge{background:#999}",
    "p.settings{margin:.2em 0;color:#333}p.alert{margin:.2em 0;font-weight:bold;color:#36c}",
    ".charts{display:flex;gap:1.5em;margin:.4em 0}figure{margin:0}",
    "figcaption{font-size:.8em;color:#555}svg.chart{background:#f4f8f4;border:1px solid #ddd}",
    "svg.chart polyline{fill:none;stroke:#3a3;stroke-width:1.5}",
    "svg.chart polygon{fill:#cec;stroke:none}svg.chart text{font-size:10px;fill:#888}",
    "table{border-collapse:collapse;font-size:.9em}",
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}",
    "td.l,th.l{text-align:left}th{background:#eee}",
    "tr.up td.state{background:#bfb}tr.down{background:#fcc}tr.down td.state{background:#f99}",
    "tr.unknown td.state,tr.unchecked td.state{background:#eee}",
    "tr.sorry{background:#dde8ff}td.reason{font-weight:bold}",
);

/// The status page of `snapshot`; it reloads itself every [`REFRESH_SECS`] seconds.
pub fn render_status(snapshot: &Snapshot) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\n<title>xlb status</title>\n\
         <style>{STYLE}</style>\n</head><body>\n<h1>xlb</h1>\n"
    );
    let services = sorted_services(&snapshot.listing);
    let reals: Vec<&RealListing> = services
        .iter()
        .flat_map(|s| configured(s))
        .collect::<Vec<_>>();
    let down = reals.iter().filter(|r| real_up(r) == 0).count();
    let _ = writeln!(
        out,
        "<p class=\"sum\">{} virtual service{}, {} real server{}, {down} down; \
         traffic over the last {}; reloads every {REFRESH_SECS} s</p>",
        services.len(),
        plural(services.len()),
        reals.len(),
        plural(reals.len()),
        format_duration(snapshot.traffic.span()),
    );
    if services.is_empty() {
        out.push_str("<p>No virtual service.</p>\n");
    }
    for svc in services {
        service_box(&mut out, snapshot, svc);
    }
    drops(&mut out, &snapshot.globals);
    if let Some(h) = &snapshot.health {
        let _ = writeln!(
            out,
            "<h2>Health checks</h2>\n<p>{} checks, {} failed, {} late</p>",
            h.checks, h.failures, h.late
        );
    }
    out.push_str("<p><a href=\"/metrics\">metrics</a></p>\n</body></html>\n");
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The configured real servers of a service: all but the sorry server.
fn configured(svc: &ServiceListing) -> impl Iterator<Item = &RealListing> {
    svc.reals.iter().filter(|r| !is_sorry(r))
}

fn is_sorry(real: &RealListing) -> bool {
    real.health.as_ref().is_some_and(|h| h.state == SORRY)
}

/// Whether a service is served, at a glance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Every configured server is up.
    Up,
    /// Some are up, some down.
    Degraded,
    /// None is up, and no sorry server stands in.
    Down,
    /// The quorum is lost: the sorry server takes every new connection.
    Sorry,
    /// The service has no real server.
    Empty,
}

impl Served {
    /// The service box's CSS class.
    pub fn class(self) -> &'static str {
        match self {
            Served::Up => "up",
            Served::Degraded => "degraded",
            Served::Down => "down",
            Served::Sorry => "sorry",
            Served::Empty => "empty",
        }
    }
}

/// A service at a glance: whether it is served, and by how many of its servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceState {
    /// Whether it is served.
    pub served: Served,
    /// Configured servers up (unchecked ones and those not checked yet count as up).
    pub up: usize,
    /// Configured servers (the sorry server is not one).
    pub total: usize,
}

impl ServiceState {
    /// Of a listed service.
    pub fn of(svc: &ServiceListing) -> Self {
        let total = configured(svc).count();
        let up = configured(svc).filter(|r| real_up(r) == 1).count();
        let served = if svc.reals.iter().any(is_sorry) {
            Served::Sorry
        } else if total == 0 {
            Served::Empty
        } else if up == 0 {
            Served::Down
        } else if up < total {
            Served::Degraded
        } else {
            Served::Up
        };
        ServiceState { served, up, total }
    }

    /// What the badge says: `UP 2/3`, `DOWN 0/2`, `SORRY 0/2`, `NO SERVER`.
    pub fn badge(&self) -> String {
        let word = match self.served {
            Served::Empty => return "NO SERVER".to_owned(),
            Served::Up | Served::Degraded => "UP",
            Served::Down => "DOWN",
            Served::Sorry => "SORRY",
        };
        format!("{word} {}/{}", self.up, self.total)
    }
}

/// How a service's real servers are checked, in a line: what, how often, and what makes a
/// change of state.
pub fn describe_checks(health: &ServiceHealth) -> String {
    let spec = match health.spec_for(&CheckOptions::default()) {
        Ok(Some(spec)) => spec,
        Ok(None) => {
            return "none by default; a server without a check of its own counts as up".to_owned()
        }
        Err(e) => return format!("check settings refused: {e}"),
    };
    let http = |scheme: &str, h: &HttpCheck| {
        let mut text = format!("{scheme} GET {} expects {}", h.path, h.status);
        if let Some(host) = &h.host {
            let _ = write!(text, " (Host {host})");
        }
        if let Some(expect) = &h.expect {
            let _ = write!(text, " and a body with {expect}");
        }
        text
    };
    let mut text = match &spec.check {
        Check::Tcp | Check::TcpHalfOpen if spec.via_vip => {
            "SYN to the VIP through the forwarding path (SYN-ACK from the VIP)".to_owned()
        }
        Check::Tcp => "tcp connect".to_owned(),
        Check::TcpHalfOpen => "tcp half-open (SYN, SYN-ACK)".to_owned(),
        Check::Http(h) => http("http", h),
        Check::Https { http: h, verify } => {
            let mut text = http("https", h);
            if !verify {
                text.push_str(", certificate not verified");
            }
            text
        }
        Check::SendExpect { send, expect } => {
            let mut text = "send-expect".to_owned();
            if let Some(send) = send {
                let _ = write!(text, " sends {send}");
            }
            if let Some(expect) = expect {
                let _ = write!(text, " expects {expect}");
            }
            text
        }
        Check::Exec {
            command,
            dynamic_weight,
            shell,
        } => {
            let mut text = format!("exec {command}");
            if *shell {
                text.push_str(" (by sh -c)");
            }
            if *dynamic_weight {
                text.push_str(" (exit code sets the weight)");
            }
            text
        }
    };
    match (spec.addr, spec.port) {
        (Some(addr), Some(port)) => {
            let _ = write!(text, " on {}", SocketAddr::new(addr, port));
        }
        (Some(addr), None) => {
            let _ = write!(text, " on {addr}");
        }
        (None, Some(port)) => {
            let _ = write!(text, " on port {port}");
        }
        (None, None) => {}
    }
    let t = &spec.timing;
    let _ = write!(
        text,
        ", every {}, timeout {}, up after {} good, down after {} failed",
        format_duration(t.interval),
        format_duration(t.timeout),
        t.rise,
        t.fall,
    );
    if !t.slow_start.is_zero() {
        let _ = write!(text, ", slow start {}", format_duration(t.slow_start));
    }
    if health.inhibit_on_failure {
        text.push_str(", a failed server stays at weight 0");
    }
    text
}

fn service_box(out: &mut String, snapshot: &Snapshot, svc: &ServiceListing) {
    let e = escape_html;
    let state = ServiceState::of(svc);
    let _ = writeln!(
        out,
        "<section class=\"{}\">\n<h2><span class=\"badge\">{}</span>{} {} ({})</h2>",
        state.served.class(),
        e(&state.badge()),
        e(&protocol_label(svc.addr.protocol).to_uppercase()),
        e(&svc.addr.to_string()),
        e(svc.scheduler.name()),
    );
    let settings = snapshot.settings.get(&svc.addr);
    let live_weight: u64 = configured(svc).map(|r| u64::from(r.weight)).sum();
    if let Some(health) = settings {
        let _ = writeln!(
            out,
            "<p class=\"settings\">checks: {}</p>",
            e(&describe_checks(health))
        );
        let mut quorum = format!("quorum {}, live weight {live_weight}", health.quorum);
        match &health.sorry_server {
            Some(sorry) if state.served == Served::Sorry => {
                let _ = writeln!(
                    out,
                    "<p class=\"alert\">Quorum lost: the sorry server {} takes every new \
                     connection.</p>",
                    e(&sorry.to_string())
                );
            }
            Some(sorry) => {
                let _ = write!(quorum, "; sorry server {sorry} on standby");
            }
            None => quorum.push_str("; no sorry server"),
        }
        let _ = writeln!(out, "<p class=\"settings\">{}</p>", e(&quorum));
    }
    charts(
        out,
        &snapshot.traffic.of(&svc.addr),
        snapshot.traffic.capacity(),
    );
    let _ = writeln!(
        out,
        "<p class=\"settings\">totals: {} connections, {} packets, {} bytes</p>",
        svc.stats.conns, svc.stats.in_pkts, svc.stats.in_bytes,
    );
    if svc.reals.is_empty() {
        out.push_str("<p>No real server.</p>\n</section>\n");
        return;
    }
    out.push_str(concat!(
        "<table>\n<tr><th class=\"l\">real server</th><th class=\"l\">forwarding</th>",
        "<th>weight</th><th class=\"l\">state</th><th class=\"l\">reason / last failure</th>",
        "<th class=\"l\">check</th><th>latency</th><th>active</th><th>inactive</th>",
        "<th>connections</th><th>packets</th><th>bytes</th><th>conn/s</th>",
        "<th>packets/s</th><th>bytes/s</th></tr>\n",
    ));
    for real in &svc.reals {
        real_row(out, real);
    }
    out.push_str("</table>\n</section>\n");
}

fn real_row(out: &mut String, real: &RealListing) {
    let e = escape_html;
    let (state, check, latency, failure) = match &real.health {
        Some(h) => (
            h.state.as_str(),
            h.check.as_str(),
            h.latency_us
                .map(|us| format!("{:.1} ms", us as f64 / 1000.0))
                .unwrap_or_default(),
            h.last_failure.as_deref().unwrap_or_default(),
        ),
        None => ("unchecked", "", String::new(), ""),
    };
    let down = real_up(real) == 0;
    let class = if down { "down" } else { state };
    let reason_class = if down { "l reason" } else { "l" };
    let _ = writeln!(
        out,
        "<tr class=\"{}\"><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td>\
         <td class=\"l state\">{}</td><td class=\"{reason_class}\">{}</td><td class=\"l\">{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td></tr>",
        e(class),
        e(&SocketAddr::new(real.addr, real.port).to_string()),
        forwarding_label(real.forwarding),
        real.weight,
        e(&state.to_uppercase()),
        e(failure),
        e(check),
        e(&latency),
        real.active_conns,
        real.inactive_conns,
        real.stats.conns,
        real.stats.in_pkts,
        real.stats.in_bytes,
        real.rates.cps,
        real.rates.in_pps,
        real.rates.in_bps,
    );
}

/// The three charts of a service's traffic: connections, packets and bytes per second.
fn charts(out: &mut String, points: &[Traffic], capacity: usize) {
    out.push_str("<div class=\"charts\">\n");
    for (name, unit, values) in [
        (
            "connections",
            "/s",
            points.iter().map(|p| p.cps).collect::<Vec<_>>(),
        ),
        ("packets", "/s", points.iter().map(|p| p.pps).collect()),
        ("bytes", "B/s", points.iter().map(|p| p.bps).collect()),
    ] {
        let now = values.last().copied().unwrap_or(0);
        let max = values.iter().copied().max().unwrap_or(0);
        let _ = writeln!(
            out,
            "<figure><figcaption>{name}: {}{unit} now, {}{unit} at most</figcaption>{}</figure>",
            si(now),
            si(max),
            chart(&values, capacity, &format!("{name} per second")),
        );
    }
    out.push_str("</div>\n");
}

/// A chart's size in pixels.
const CHART_WIDTH: u32 = 240;
const CHART_HEIGHT: u32 = 48;

/// A small line chart of `values` (oldest first) in a frame of `capacity` points: the newest
/// at the right edge, so that a history still filling up grows from the right; the top is the
/// largest value. Inline SVG, no script.
pub fn chart(values: &[u64], capacity: usize, label: &str) -> String {
    let (w, h) = (CHART_WIDTH, CHART_HEIGHT);
    let mut svg = format!(
        "<svg class=\"chart\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"{}\"><title>{}</title>",
        escape_html(label),
        escape_html(label),
    );
    if values.len() < 2 {
        let _ = write!(
            svg,
            "<text x=\"6\" y=\"{}\">collecting…</text></svg>",
            h / 2 + 4
        );
        return svg;
    }
    let capacity = capacity.max(values.len());
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let step = f64::from(w) / (capacity - 1).max(1) as f64;
    let first = capacity - values.len();
    // One pixel of margin at the top and bottom, so that the line is never clipped.
    let y = |v: u64| f64::from(h) - 1.0 - v as f64 / max * f64::from(h - 2);
    let line: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| format!("{:.1},{:.1}", (first + i) as f64 * step, y(v)))
        .collect();
    let line = line.join(" ");
    let left = first as f64 * step;
    let _ = write!(
        svg,
        "<polygon points=\"{left:.1},{h} {line} {w:.1},{h}\"/><polyline points=\"{line}\"/></svg>",
        w = f64::from(w),
    );
    svg
}

/// A number with an SI prefix, three significant digits at most: `950`, `12.3k`, `4.56M`.
pub fn si(n: u64) -> String {
    const PREFIXES: [&str; 6] = ["", "k", "M", "G", "T", "P"];
    let mut value = n as f64;
    let mut prefix = 0;
    while value >= 1000.0 && prefix + 1 < PREFIXES.len() {
        value /= 1000.0;
        prefix += 1;
    }
    if prefix == 0 {
        n.to_string()
    } else if value >= 100.0 {
        format!("{value:.0}{}", PREFIXES[prefix])
    } else if value >= 10.0 {
        format!("{value:.1}{}", PREFIXES[prefix])
    } else {
        format!("{value:.2}{}", PREFIXES[prefix])
    }
}

fn drops(out: &mut String, globals: &[(GlobalStat, u64)]) {
    out.push_str("<h2>Data path drops</h2>\n");
    let drops: Vec<&(GlobalStat, u64)> = globals
        .iter()
        .filter(|(stat, value)| stat.name().starts_with("drop_") && *value > 0)
        .collect();
    if drops.is_empty() {
        out.push_str("<p>No packet dropped.</p>\n");
        return;
    }
    out.push_str("<table>\n<tr><th class=\"l\">reason</th><th>packets</th></tr>\n");
    for (stat, value) in drops {
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{}</td><td>{value}</td></tr>",
            escape_html(stat.name())
        );
    }
    out.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::{
        metrics::{
            fixtures::{globals, listing, real, stats},
            history::History,
        },
        state::health::{CheckKind, SorryServer, StatusRanges},
        status::{Listing, RealHealth, Stats},
    };

    fn snapshot(listing: Listing) -> Snapshot {
        Snapshot {
            listing,
            globals: globals(),
            health: Some(stats()),
            ..Snapshot::default()
        }
    }

    fn up(mut real: RealListing) -> RealListing {
        real.health = None;
        real
    }

    fn http_check() -> ServiceHealth {
        ServiceHealth {
            check: CheckOptions {
                kind: Some(CheckKind::Http),
                path: Some("/health".into()),
                status: Some("200-299".parse::<StatusRanges>().expect("status")),
                interval: Some(Duration::from_secs(2)),
                fall: Some(3),
                ..CheckOptions::default()
            },
            ..ServiceHealth::default()
        }
    }

    #[test]
    fn the_page_shows_services_reals_and_drops_escaped() {
        let html = render_status(&snapshot(listing()));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(html.contains("TCP 10.0.0.1:80"));
        assert!(html.contains("10.0.0.2:80") && html.contains("10.0.0.3:80"));
        assert!(
            html.contains("status 503 &lt;&quot;oops&quot;&gt;"),
            "{html}"
        );
        assert!(!html.contains("<\"oops\">"));
        assert!(html.contains("<td class=\"l\">drop_no_real</td><td>7</td>"));
        assert!(
            !html.contains("verdict_tx"),
            "only non-zero drops are listed"
        );
        assert!(html.contains("40 checks, 4 failed"));
        assert!(
            html.contains("1 virtual service, 2 real servers, 1 down"),
            "{html}"
        );
    }

    #[test]
    fn a_down_server_shows_its_reason_on_a_red_row() {
        let html = render_status(&snapshot(listing()));
        let row = html
            .lines()
            .find(|l| l.contains("10.0.0.3:80"))
            .expect("the down server's row");
        assert!(row.starts_with("<tr class=\"down\">"), "{row}");
        assert!(row.contains("<td class=\"l state\">DOWN</td>"), "{row}");
        assert!(
            row.contains("<td class=\"l reason\">status 503 &lt;&quot;oops&quot;&gt;</td>"),
            "{row}"
        );
        let row = html
            .lines()
            .find(|l| l.contains("10.0.0.2:80"))
            .expect("the up server's row");
        assert!(row.starts_with("<tr class=\"up\">"), "{row}");
    }

    #[test]
    fn a_service_is_up_degraded_down_sorry_or_empty_at_a_glance() {
        let at_a_glance = |svc: &ServiceListing| {
            let state = ServiceState::of(svc);
            (state.served, state.badge())
        };
        let mut l = listing();
        let svc = &mut l.services[0];
        assert_eq!(at_a_glance(svc), (Served::Degraded, "UP 1/2".into()));
        svc.reals[1] = up(svc.reals[1].clone());
        assert_eq!(at_a_glance(svc), (Served::Up, "UP 2/2".into()));

        let down = |r: &RealListing| {
            let mut r = r.clone();
            r.health = Some(RealHealth {
                state: "down".into(),
                check: "tcp".into(),
                last_ok: Some(false),
                latency_us: None,
                last_failure: Some("connection refused".into()),
            });
            r
        };
        svc.reals = svc.reals.iter().map(down).collect();
        assert_eq!(at_a_glance(svc), (Served::Down, "DOWN 0/2".into()));

        let mut sorry = up(real(9, 1, None));
        sorry.health = Some(RealHealth {
            state: SORRY.into(),
            check: "sorry server: quorum lost".into(),
            last_ok: None,
            latency_us: None,
            last_failure: None,
        });
        svc.reals.push(sorry);
        assert_eq!(
            at_a_glance(svc),
            (Served::Sorry, "SORRY 0/2".into()),
            "the sorry server is not one of the servers counted"
        );

        svc.reals.clear();
        assert_eq!(at_a_glance(svc), (Served::Empty, "NO SERVER".into()));
    }

    #[test]
    fn health_settings_read_as_a_sentence() {
        assert_eq!(
            describe_checks(&http_check()),
            "http GET /health expects 200-299, every 2s, timeout 1s, up after 2 good, \
             down after 3 failed"
        );
        let mut tcp = ServiceHealth {
            check: CheckOptions {
                kind: Some(CheckKind::Tcp),
                port: Some(8080),
                slow_start: Some(Duration::from_secs(30)),
                ..CheckOptions::default()
            },
            inhibit_on_failure: true,
            ..ServiceHealth::default()
        };
        let text = describe_checks(&tcp);
        assert!(
            text.starts_with("tcp connect on port 8080, every 2s"),
            "{text}"
        );
        assert!(text.ends_with(", slow start 30s, a failed server stays at weight 0"));
        tcp.check = CheckOptions::default();
        assert!(describe_checks(&tcp).starts_with("none by default"));
    }

    #[test]
    fn the_page_shows_checks_quorum_and_the_sorry_server_in_use() {
        let mut settings = http_check();
        settings.quorum = 2;
        settings.sorry_server = Some("10.0.0.9".parse::<SorryServer>().expect("sorry"));
        let mut snap = snapshot(listing());
        snap.settings
            .insert(snap.listing.services[0].addr, settings);
        let html = render_status(&snap);
        assert!(
            html.contains("checks: http GET /health expects 200-299"),
            "{html}"
        );
        assert!(
            html.contains("quorum 2, live weight 3; sorry server 10.0.0.9 on standby"),
            "{html}"
        );
        assert!(html.contains("<section class=\"degraded\">"));

        let mut sorry = real(9, 1, None);
        sorry.health = Some(RealHealth {
            state: SORRY.into(),
            check: "sorry server: quorum lost".into(),
            last_ok: None,
            latency_us: None,
            last_failure: None,
        });
        snap.listing.services[0].reals.push(sorry);
        let html = render_status(&snap);
        assert!(html.contains("<section class=\"sorry\">"));
        assert!(
            html.contains("<span class=\"badge\">SORRY 1/2</span>"),
            "{html}"
        );
        assert!(
            html.contains("Quorum lost: the sorry server 10.0.0.9 takes every new connection."),
            "{html}"
        );
        assert!(html.contains("<tr class=\"sorry\">"), "{html}");
    }

    #[test]
    fn each_service_has_a_chart_of_its_connections_packets_and_bytes() {
        let mut history = History::new(300, Duration::from_secs(1));
        let mut l = listing();
        for i in 0..4u64 {
            l.services[0].stats = Stats {
                conns: 10 * i * i,
                in_pkts: 100 * i,
                out_pkts: 0,
                in_bytes: 150_000 * i,
                out_bytes: 0,
            };
            history.record(i * 1_000_000_000, &l);
        }
        let mut snap = snapshot(l);
        snap.traffic = Arc::new(history);
        let html = render_status(&snap);
        assert_eq!(html.matches("<svg class=\"chart\"").count(), 3);
        assert_eq!(html.matches("<polyline points=").count(), 3, "{html}");
        assert!(
            html.contains("connections: 50/s now, 50/s at most"),
            "{html}"
        );
        assert!(html.contains("bytes: 150kB/s now"), "{html}");
        assert!(html.contains("traffic over the last 5m"), "{html}");
    }

    #[test]
    fn a_chart_grows_from_the_right_and_peaks_at_the_top() {
        let svg = chart(&[0, 5, 10], 5, "connections per second");
        assert!(svg.contains("aria-label=\"connections per second\""));
        assert!(
            svg.contains("<polyline points=\"120.0,47.0 180.0,24.0 240.0,1.0\"/>"),
            "{svg}"
        );
        assert!(
            svg.contains("<polygon points=\"120.0,48 120.0,47.0"),
            "{svg}"
        );
        let flat = chart(&[0, 0], 5, "x");
        assert!(
            flat.contains("<polyline points=\"180.0,47.0 240.0,47.0\"/>"),
            "{flat}"
        );
        for few in [&[][..], &[7]] {
            let svg = chart(few, 5, "x");
            assert!(
                svg.contains("collecting") && !svg.contains("polyline"),
                "{svg}"
            );
        }
    }

    #[test]
    fn numbers_take_si_prefixes() {
        assert_eq!(si(0), "0");
        assert_eq!(si(999), "999");
        assert_eq!(si(1000), "1.00k");
        assert_eq!(si(12_345), "12.3k");
        assert_eq!(si(456_789), "457k");
        assert_eq!(si(4_560_000_000), "4.56G");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
