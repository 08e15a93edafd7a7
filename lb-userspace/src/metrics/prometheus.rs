//! The daemon's numbers in Prometheus' text exposition format (0.0.4): per service and per real
//! server, every data-path counter, the health engine's counters and `xlb_up`. Pure.

use std::{fmt::Write as _, net::SocketAddr};

use lb_common::GlobalStat;

use crate::{
    conn_filter::FilterState,
    health::{engine::EngineStats, machine::Health},
    state::{Forwarding, Protocol},
    status::{Listing, RealListing, ServiceListing},
};

/// The content type of the text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its HELP and TYPE lines, then all its samples together (the format wants
/// a family's samples contiguous).
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Vec<(String, String)>,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        Self {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &str, value: impl std::fmt::Display) {
        self.samples.push((labels.to_owned(), value.to_string()));
    }

    fn write(&self, out: &mut String) {
        let kind = match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
        for (labels, value) in &self.samples {
            let _ = writeln!(out, "{}{labels} {value}", self.name);
        }
    }
}

/// A HELP text as the format wants it: backslash and newline escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

/// `{name="value",...}`.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape_label_value(value)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// The `protocol` label of a service.
pub fn protocol_label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The `forwarding` label of a real server, named as `xlb-realserver --mode` names them.
pub fn forwarding_label(forwarding: Forwarding) -> &'static str {
    match forwarding {
        Forwarding::DirectRoute => "dr",
        Forwarding::Tunnel => "tun",
    }
}

/// `xlb_real_up`: 0 only when the health check says down. A server without a check and a
/// checked one before its first result both keep their configured weight and take traffic
/// (see [`crate::health::machine`]), so they count as up.
pub fn real_up(real: &RealListing) -> u8 {
    let down = Health::Down.to_string();
    u8::from(real.health.as_ref().is_none_or(|h| h.state != down))
}

/// The services in address order, as `-L` lists them.
pub fn sorted_services(listing: &Listing) -> Vec<&ServiceListing> {
    let mut services: Vec<&ServiceListing> = listing.services.iter().collect();
    services.sort_by_key(|s| s.addr);
    services
}

/// The exposition text (format 0.0.4) of the daemon's numbers: per service and per real server,
/// every data-path counter, the health engine's counters when there is an engine, and `xlb_up`.
pub fn render(
    listing: &Listing,
    globals: &[(GlobalStat, u64)],
    health: Option<&EngineStats>,
    conn_filter: Option<FilterState>,
) -> String {
    use Kind::{Counter, Gauge};
    let mut up = Family::new(
        "xlb_up",
        Gauge,
        "1 when xlbd read its data path's counters for this scrape.",
    );
    let mut svc_conns = Family::new(
        "xlb_service_connections_total",
        Counter,
        "New connections (connection-table misses) the service scheduled to a real server.",
    );
    let mut svc_packets = Family::new(
        "xlb_service_packets_total",
        Counter,
        "Packets from clients forwarded for the service.",
    );
    let mut svc_bytes = Family::new(
        "xlb_service_bytes_total",
        Counter,
        "Bytes from clients forwarded for the service, counted from the Ethernet header.",
    );
    let mut svc_settled = Family::new(
        "xlb_service_settled",
        Gauge,
        "1 when the service's SYNs skip the embryonic table: its choice of a server is its \
         table's (mh, sh, dh; not persistent; no -x) and every handshake in progress is where the \
         table sends it (see the README, SYN floods).",
    );
    let mut real_conns = Family::new(
        "xlb_real_connections_total",
        Counter,
        "New connections scheduled to the real server.",
    );
    let mut real_packets = Family::new(
        "xlb_real_packets_total",
        Counter,
        "Packets from clients forwarded to the real server.",
    );
    let mut real_bytes = Family::new(
        "xlb_real_bytes_total",
        Counter,
        "Bytes from clients forwarded to the real server, counted from the Ethernet header.",
    );
    let mut real_weight = Family::new(
        "xlb_real_weight",
        Gauge,
        "The weight in force: the configured one, 0 while a health check holds the server out, \
         less during a slow start.",
    );
    let mut real_active = Family::new(
        "xlb_real_active_connections",
        Gauge,
        "Tracked connections in an established state (TCP, not idled out).",
    );
    let mut real_inactive = Family::new(
        "xlb_real_inactive_connections",
        Gauge,
        "Other tracked connections: embryonic (SYN_RECV) and closing TCP, and UDP flows, not idled out.",
    );
    let mut real_up_family = Family::new(
        "xlb_real_up",
        Gauge,
        "1 up, 0 down by the health check. Servers without a check, and checked ones before \
         their first result (they keep their configured weight meanwhile), are 1.",
    );
    let mut real_latency = Family::new(
        "xlb_real_check_latency_seconds",
        Gauge,
        "How long the last health check of the real server took (checked servers with a result).",
    );
    let mut datapath = Family::new(
        "xlb_datapath_packets_total",
        Counter,
        "Packets by the data path's verdict and by the reason they were passed or dropped; \
         seen_*, icmp_* and conntrack_* count events alongside a verdict.",
    );

    up.add("", 1);
    for svc in sorted_services(listing) {
        let service = svc.addr.to_string();
        let protocol = protocol_label(svc.addr.protocol);
        let svc_labels = labels(&[("service", &service), ("protocol", protocol)]);
        svc_conns.add(&svc_labels, svc.stats.conns);
        svc_packets.add(&svc_labels, svc.stats.in_pkts);
        svc_bytes.add(&svc_labels, svc.stats.in_bytes);
        svc_settled.add(&svc_labels, u64::from(svc.settled));
        for real in &svc.reals {
            let addr = SocketAddr::new(real.addr, real.port).to_string();
            let l = labels(&[
                ("service", &service),
                ("protocol", protocol),
                ("real", &addr),
                ("forwarding", forwarding_label(real.forwarding)),
            ]);
            real_conns.add(&l, real.stats.conns);
            real_packets.add(&l, real.stats.in_pkts);
            real_bytes.add(&l, real.stats.in_bytes);
            real_weight.add(&l, real.weight);
            real_active.add(&l, real.active_conns);
            real_inactive.add(&l, real.inactive_conns);
            real_up_family.add(&l, real_up(real));
            if let Some(us) = real.health.as_ref().and_then(|h| h.latency_us) {
                real_latency.add(&l, us as f64 / 1e6);
            }
        }
    }
    for (stat, value) in globals {
        datapath.add(&labels(&[("reason", stat.name())]), value);
    }

    let mut families = vec![
        up,
        svc_conns,
        svc_packets,
        svc_bytes,
        svc_settled,
        real_conns,
        real_packets,
        real_bytes,
        real_weight,
        real_active,
        real_inactive,
        real_up_family,
        real_latency,
        datapath,
    ];
    if let Some(h) = health {
        let mut checks = Family::new(
            "xlb_health_checks_total",
            Counter,
            "Health checks done since xlbd started.",
        );
        checks.add("", h.checks);
        let mut failures = Family::new(
            "xlb_health_check_failures_total",
            Counter,
            "Health checks that failed since xlbd started.",
        );
        failures.add("", h.failures);
        let mut late = Family::new(
            "xlb_health_checks_late_total",
            Counter,
            "Health checks that started more than a tenth of their interval late.",
        );
        late.add("", h.late);
        families.extend([checks, failures, late]);
    }
    if let Some(f) = conn_filter {
        let mut on = Family::new(
            "xlb_connection_filter_on",
            Gauge,
            "1 once xlbd's sweep has built the connection filter, which lets a new flow's SYN \
             skip the connection table's lookup (see the README, SYN floods).",
        );
        on.add("", u8::from(f.on));
        let mut fill = Family::new(
            "xlb_connection_filter_bits_set_ratio",
            Gauge,
            "The share of the connection filter's bits that are set (0 while it is off): about the \
             share of new flows' SYNs that still look the connection table up.",
        );
        fill.add("", f.fill());
        families.extend([on, fill]);
    }
    let mut out = String::new();
    for family in &families {
        family.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use super::*;
    use crate::{
        metrics::fixtures::{globals, listing, stats},
        status::RealHealth,
    };

    #[test]
    fn one_service_with_two_reals_one_down() {
        let text = render(&listing(), &globals(), Some(&stats()), None);
        let svc = r#"service="10.0.0.1:80",protocol="tcp""#;
        let r2 = format!(r#"{svc},real="10.0.0.2:80",forwarding="dr""#);
        let r3 = format!(r#"{svc},real="10.0.0.3:80",forwarding="dr""#);
        let expected = [
            "xlb_up 1".to_owned(),
            format!("xlb_service_connections_total{{{svc}}} 50"),
            format!("xlb_service_packets_total{{{svc}}} 500"),
            format!("xlb_service_bytes_total{{{svc}}} 30000"),
            format!("xlb_service_settled{{{svc}}} 1"),
            format!("xlb_real_connections_total{{{r2}}} 20"),
            format!("xlb_real_connections_total{{{r3}}} 30"),
            format!("xlb_real_packets_total{{{r2}}} 200"),
            format!("xlb_real_packets_total{{{r3}}} 300"),
            format!("xlb_real_bytes_total{{{r2}}} 12000"),
            format!("xlb_real_bytes_total{{{r3}}} 18000"),
            format!("xlb_real_weight{{{r2}}} 3"),
            format!("xlb_real_weight{{{r3}}} 0"),
            format!("xlb_real_active_connections{{{r2}}} 2"),
            format!("xlb_real_active_connections{{{r3}}} 3"),
            format!("xlb_real_inactive_connections{{{r2}}} 1"),
            format!("xlb_real_inactive_connections{{{r3}}} 1"),
            format!("xlb_real_up{{{r2}}} 1"),
            format!("xlb_real_up{{{r3}}} 0"),
            format!("xlb_real_check_latency_seconds{{{r2}}} 0.0015"),
            format!("xlb_real_check_latency_seconds{{{r3}}} 0.00025"),
            r#"xlb_datapath_packets_total{reason="drop_no_real"} 7"#.to_owned(),
            r#"xlb_datapath_packets_total{reason="verdict_tx"} 0"#.to_owned(),
            "xlb_health_checks_total 40".to_owned(),
            "xlb_health_check_failures_total 4".to_owned(),
            "xlb_health_checks_late_total 1".to_owned(),
        ];
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        for line in &expected {
            assert!(
                samples.contains(&line.as_str()),
                "missing {line} in:\n{text}"
            );
        }
        // Families are contiguous and in this order.
        let names: Vec<&str> = samples
            .iter()
            .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
            .collect();
        let mut deduped = names.clone();
        deduped.dedup();
        let mut unique = deduped.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(deduped.len(), unique.len(), "a family is split:\n{text}");
        assert!(text.ends_with('\n'));
        assert!(text.contains(
            "# HELP xlb_service_bytes_total Bytes from clients forwarded for the service, counted \
             from the Ethernet header.\n# TYPE xlb_service_bytes_total counter\n"
        ));
        assert!(text.contains("# TYPE xlb_real_up gauge\n"));
    }

    #[test]
    fn the_connection_filter_says_whether_it_is_on_and_how_full_it_is() {
        let off = FilterState {
            on: false,
            bits_set: 0,
            bits: 1 << 21,
        };
        let text = render(&Listing::default(), &[], None, Some(off));
        assert!(text.contains("\nxlb_connection_filter_on 0\n"), "{text}");
        assert!(
            text.contains("\nxlb_connection_filter_bits_set_ratio 0\n"),
            "{text}"
        );
        let on = FilterState {
            on: true,
            bits_set: 1 << 18,
            bits: 1 << 21,
        };
        let text = render(&Listing::default(), &[], None, Some(on));
        assert!(text.contains("\nxlb_connection_filter_on 1\n"), "{text}");
        assert!(
            text.contains("\nxlb_connection_filter_bits_set_ratio 0.125\n"),
            "{text}"
        );
        assert!(!render(&Listing::default(), &[], None, None).contains("xlb_connection_filter"));
    }

    #[test]
    fn help_and_type_once_per_family_and_before_its_samples() {
        let text = render(&listing(), &globals(), Some(&stats()), None);
        let mut seen = std::collections::HashSet::new();
        let mut current = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(seen.insert(name.to_owned()), "HELP twice for {name}");
                current = name;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert_eq!(name, current, "TYPE not after its HELP");
                assert!(kind == "counter" || kind == "gauge");
                assert_eq!(
                    name.ends_with("_total"),
                    kind == "counter",
                    "{name} is a {kind}"
                );
            } else {
                assert!(
                    line.starts_with(current),
                    "{line} outside its family {current}"
                );
            }
        }
        assert!(text.matches("# TYPE ").count() == seen.len());
    }

    #[test]
    fn every_global_counter_is_exported_zeros_included() {
        let globals: Vec<(GlobalStat, u64)> = GlobalStat::ALL.iter().map(|&s| (s, 0)).collect();
        let text = render(&Listing::default(), &globals, None, None);
        for stat in GlobalStat::ALL {
            let line = format!("xlb_datapath_packets_total{{reason=\"{}\"}} 0", stat.name());
            assert!(text.lines().any(|l| l == line), "missing {line}");
        }
        assert_eq!(
            text.matches("xlb_datapath_packets_total{").count(),
            GlobalStat::ALL.len()
        );
        // No health engine: no health families.
        assert!(!text.contains("xlb_health_checks_total"));
        // No service: the families are still declared.
        assert!(text.contains("# TYPE xlb_real_packets_total counter\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("a\nb"), r"a\nb");
        assert_eq!(
            labels(&[("service", "x\"y"), ("protocol", "tcp")]),
            r#"{service="x\"y",protocol="tcp"}"#
        );
    }

    #[test]
    fn ipv6_services_and_tunnels_are_labelled_like_ipvsadm_prints_them() {
        let mut l = listing();
        l.services[0].addr.addr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        l.services[0].addr.protocol = Protocol::Udp;
        l.services[0].reals.truncate(1);
        l.services[0].reals[0].addr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
        l.services[0].reals[0].forwarding = Forwarding::Tunnel;
        l.services[0].reals[0].health = None;
        let text = render(&l, &[], None, None);
        assert!(text.contains(
            "xlb_real_up{service=\"[fd00::1]:80\",protocol=\"udp\",real=\"[fd00::2]:80\",\
             forwarding=\"tun\"} 1\n"
        ));
        // An unchecked server has no latency.
        assert!(!text.contains("xlb_real_check_latency_seconds{"));
    }

    #[test]
    fn a_server_not_checked_yet_counts_as_up() {
        let mut l = listing();
        l.services[0].reals[1].health = Some(RealHealth {
            state: Health::Unknown.to_string(),
            check: "tcp 10.0.0.3:80".into(),
            last_ok: None,
            latency_us: None,
            last_failure: None,
        });
        assert_eq!(real_up(&l.services[0].reals[1]), 1);
    }
}
