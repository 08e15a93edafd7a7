//! The `-L` listings, character for character in ipvsadm's layout (ipvsadm.c `list_all`,
//! `print_title`, `print_service_entry` and `print_largenum`), so that scripts that read
//! `ipvsadm -L -n` read `xlbadm -L -n`. The formatter takes a [`Listing`] snapshot (see
//! [`crate::status`]) that the daemon fills from the desired state and the BPF counters; it does
//! no I/O.
//!
//! The first line is ipvsadm's own, `IP Virtual Server version 1.2.1 (size=4096)`, word for word:
//! monitoring scripts and exporters skip or match that line, and nothing reads the version from
//! it, so an "xlb" wording would break them for no gain; `xlbadm -v` says what is really running.
//!
//! Columns keep ipvsadm's quirks: trailing spaces after the last left-aligned column, service
//! names cut to 33 characters and server names to 28 for IPv4 services, counters abbreviated to
//! K, M, G, T (powers of 1000) above 8 digits unless `--exact`. `OutPkts` and `OutBytes` are 0 for
//! direct routing and tunneling, since replies go straight to the client, as with ipvsadm.
//!
//! `-c` lists the connection table as ipvsadm's `print_conn` does, from [`ConnectionListing`]s;
//! `--timeout` the connection timeouts as its `list_timeout` does.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use super::{parse::ListOptions, ports};
use crate::{
    state::{timeouts::ConnectionTimeouts, Forwarding, Netmask, Protocol},
    status::{ConnectionListing, Listing, RealListing, ServiceListing, Stats},
};

/// The first line of a full listing, as ipvsadm prints it with the kernel's IPVS 1.2.1.
pub const HEADER: &str = "IP Virtual Server version 1.2.1 (size=4096)";

/// `-L --timeout`: the connection timeouts in seconds, as ipvsadm's `list_timeout` prints them.
pub fn format_timeouts(timeouts: &ConnectionTimeouts) -> String {
    format!(
        "Timeout (tcp tcpfin udp): {} {} {}\n",
        timeouts.tcp_secs, timeouts.tcpfin_secs, timeouts.udp_secs
    )
}

/// Why a listing could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ListError {
    /// `-L -t VIP:PORT` of a service that does not exist (ipvsadm's message).
    #[error("No such service")]
    NoSuchService,
    /// `-L -c` was given to the service formatter: use [`format_connections`].
    #[error("the connection table is listed by format_connections")]
    Connections,
}

/// The text `-L` prints for `listing` with `options`. Unless `options.numeric`, addresses go
/// through `resolve` (the binary passes a reverse-DNS lookup; `None` keeps the number) and ports
/// through a small table of well-known names, as ipvsadm prints names without `-n`.
pub fn format_listing(
    listing: &Listing,
    options: &ListOptions,
    resolve: impl Fn(IpAddr) -> Option<String>,
) -> Result<String, ListError> {
    if options.connections {
        return Err(ListError::Connections);
    }
    if options.health {
        return Ok(format_health(listing, options, resolve));
    }
    let mut services: Vec<&ServiceListing> = listing
        .services
        .iter()
        .filter(|s| options.service.is_none_or(|only| s.addr == only))
        .collect();
    if options.service.is_some() && services.is_empty() {
        return Err(ListError::NoSuchService);
    }
    if options.sort {
        services.sort_by_key(|s| s.addr);
    }

    let names = Names {
        numeric: options.numeric,
        resolve,
    };
    let mut out = String::new();
    // ipvsadm prints the version line only when listing the whole table.
    if options.service.is_none() {
        out.push_str(HEADER);
        out.push('\n');
    }
    out.push_str(&title(options));
    for service in services {
        out.push_str(&service_entry(service, options, &names));
    }
    Ok(out)
}

/// The text `-L -c` prints, in ipvsadm's `print_conn` layout (`%-3s %02d:%02d  %-11s %-18s
/// %-18s %s`, wider address columns when any address is IPv6).
pub fn format_connections(
    connections: &[ConnectionListing],
    options: &ListOptions,
    resolve: impl Fn(IpAddr) -> Option<String>,
) -> String {
    let names = Names {
        numeric: options.numeric,
        resolve,
    };
    let width = if connections
        .iter()
        .any(|c| c.source.is_ipv6() || c.virtual_addr.is_ipv6())
    {
        46
    } else {
        18
    };
    let mut out = String::from("IPVS connection entries\n");
    out.push_str(&format!(
        "pro expire {:<11} {:<width$} {:<width$} {}\n",
        "state", "source", "virtual", "destination"
    ));
    let mut sorted: Vec<&ConnectionListing> = connections
        .iter()
        .filter(|c| {
            options.service.is_none_or(|only| {
                only.protocol == c.protocol
                    && only.addr == c.virtual_addr.ip()
                    && only.port == c.virtual_addr.port()
            })
        })
        .collect();
    sorted.sort_by_key(|c| (c.virtual_addr, c.source));
    for c in sorted {
        let proto = match c.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        out.push_str(&format!(
            "{proto:<3} {:02}:{:02}  {:<11} {:<width$} {:<width$} {}\n",
            c.expire_secs / 60,
            c.expire_secs % 60,
            c.state,
            names.addr_port(c.source.ip(), c.source.port()),
            names.addr_port(c.virtual_addr.ip(), c.virtual_addr.port()),
            names.addr_port(c.destination.ip(), c.destination.port()),
        ));
    }
    out
}

/// The `-L --health` listing: every real server's health state, check, last result, its latency
/// and the reason of the last failure.
fn format_health(
    listing: &Listing,
    options: &ListOptions,
    resolve: impl Fn(IpAddr) -> Option<String>,
) -> String {
    let names = Names {
        numeric: options.numeric,
        resolve,
    };
    let mut out = format!(
        "Prot LocalAddress:Port\n  -> {:<28} {:<7} {:<28} {:<6} {:<9} {}\n",
        "RemoteAddress:Port", "State", "Check", "Last", "Latency", "LastFailure"
    );
    let mut services: Vec<&ServiceListing> = listing
        .services
        .iter()
        .filter(|s| options.service.is_none_or(|only| s.addr == only))
        .collect();
    services.sort_by_key(|s| s.addr);
    for service in services {
        let proto = match service.addr.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        out.push_str(&format!(
            "{proto}  {}\n",
            names.addr_port(service.addr.addr, service.addr.port)
        ));
        for real in &service.reals {
            let dname = names.addr_port(real.addr, real.port);
            let line = match &real.health {
                None => format!("  -> {dname:<28} {:<7} {:<28}\n", "up", "none"),
                Some(h) => {
                    let last = match h.last_ok {
                        None => "-",
                        Some(true) => "ok",
                        Some(false) => "failed",
                    };
                    let latency = h.latency_us.map_or_else(
                        || "-".to_owned(),
                        |us| format!("{:.1}ms", us as f64 / 1000.0),
                    );
                    format!(
                        "  -> {dname:<28} {:<7} {:<28} {last:<6} {latency:<9} {}\n",
                        h.state,
                        h.check,
                        h.last_failure.as_deref().unwrap_or("-")
                    )
                }
            };
            out.push_str(&line);
        }
    }
    out
}

/// Turns addresses and ports into what ipvsadm prints.
struct Names<R> {
    numeric: bool,
    resolve: R,
}

impl<R: Fn(IpAddr) -> Option<String>> Names<R> {
    /// ipvsadm's `addrport_to_anyname`.
    fn addr_port(&self, addr: IpAddr, port: u16) -> String {
        if self.numeric {
            return SocketAddr::new(addr, port).to_string();
        }
        let host = (self.resolve)(addr).unwrap_or_else(|| addr.to_string());
        let port = ports::name_by_port(port).map_or_else(|| port.to_string(), str::to_owned);
        match addr {
            IpAddr::V4(_) => format!("{host}:{port}"),
            IpAddr::V6(_) => format!("[{host}]:{port}"),
        }
    }
}

/// ipvsadm's `print_title`.
fn title(options: &ListOptions) -> String {
    let columns = |names: [&str; 5]| {
        format!(
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port\n",
            "Prot LocalAddress:Port", names[0], names[1], names[2], names[3], names[4]
        )
    };
    if options.stats {
        columns(["Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"])
    } else if options.rate {
        columns(["CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"])
    } else if options.thresholds {
        format!(
            "{:<33} {:<10} {:<10} {:<10} {:<10}\n  -> RemoteAddress:Port\n",
            "Prot LocalAddress:Port", "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"
        )
    } else if options.persistent_conn {
        format!(
            "{:<33} {:<9} {:<11} {:<10} {:<10}\n  -> RemoteAddress:Port\n",
            "Prot LocalAddress:Port", "Weight", "PersistConn", "ActiveConn", "InActConn"
        )
    } else {
        "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
            .to_owned()
    }
}

/// ipvsadm's `print_service_entry` without `FMT_RULE`: the service line, then its servers.
fn service_entry<R: Fn(IpAddr) -> Option<String>>(
    service: &ServiceListing,
    options: &ListOptions,
    names: &Names<R>,
) -> String {
    let is_v4 = service.addr.addr.is_ipv4();
    let protocol = match service.addr.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    };
    let mut svc_name = format!(
        "{protocol}  {}",
        names.addr_port(service.addr.addr, service.addr.port)
    );
    // ipvsadm cuts IPv4 names to fit its columns (svc_name[33] = '\0', dname[28] = '\0').
    if is_v4 {
        truncate(&mut svc_name, 33);
    }

    let mut out = if options.stats {
        format!(
            "{svc_name:<33}{}",
            stats_columns(&service.stats, options.exact)
        )
    } else if options.rate {
        let r = &service.rates;
        format!(
            "{svc_name:<33}{}",
            large_columns(
                &[r.cps, r.in_pps, r.out_pps, r.in_bps, r.out_bps],
                options.exact
            )
        )
    } else {
        format!("{svc_name} {}{}", service.scheduler.name(), flags(service))
    };
    out.push('\n');

    let mut reals: Vec<&RealListing> = service.reals.iter().collect();
    if options.sort {
        reals.sort_by_key(|r| (r.addr, r.port));
    }
    for real in reals {
        let mut dname = names.addr_port(real.addr, real.port);
        if is_v4 {
            truncate(&mut dname, 28);
        }
        let line = if options.stats {
            format!(
                "  -> {dname:<28}{}\n",
                stats_columns(&real.stats, options.exact)
            )
        } else if options.rate {
            let r = &real.rates;
            format!(
                "  -> {dname:<28} {:>8} {:>8} {:>8}{}\n",
                r.cps,
                r.in_pps,
                r.out_pps,
                large_columns(&[r.in_bps, r.out_bps], options.exact)
            )
        } else if options.thresholds {
            format!(
                "  -> {dname:<28} {:<10} {:<10} {:<10} {:<10}\n",
                real.upper_threshold, real.lower_threshold, real.active_conns, real.inactive_conns
            )
        } else if options.persistent_conn {
            format!(
                "  -> {dname:<28} {:<9} {:<11} {:<10} {:<10}\n",
                real.weight, real.persistent_conns, real.active_conns, real.inactive_conns
            )
        } else {
            let forward = match real.forwarding {
                Forwarding::DirectRoute => "Route",
                Forwarding::Tunnel => "Tunnel",
            };
            // Checked servers get their health state after ipvsadm's columns.
            let state = real
                .health
                .as_ref()
                .map_or(String::new(), |h| format!(" {}", h.state));
            format!(
                "  -> {dname:<28} {forward:<7} {:<6} {:<10} {:<10}{state}\n",
                real.weight, real.active_conns, real.inactive_conns
            )
        };
        out.push_str(&line);
    }
    out
}

/// The "Flags" column: the scheduler's flags in parentheses, persistence, and its mask when it is
/// not per host.
fn flags(service: &ServiceListing) -> String {
    let mut flags = String::new();
    if !service.sched_flags.is_empty() {
        flags.push_str(&format!(
            " ({})",
            service.sched_flags.names(service.scheduler)
        ));
    }
    let Some(persistence) = &service.persistence else {
        return flags;
    };
    flags.push_str(&format!(" persistent {}", persistence.timeout_secs));
    if persistence.netmask != Netmask::host(service.addr.addr) {
        match persistence.netmask {
            Netmask::V4(mask) => flags.push_str(&format!(" mask {mask}")),
            Netmask::V6Prefix(prefix) => flags.push_str(&format!(" mask {prefix}")),
        }
    }
    flags
}

fn stats_columns(stats: &Stats, exact: bool) -> String {
    large_columns(
        &[
            stats.conns,
            stats.in_pkts,
            stats.out_pkts,
            stats.in_bytes,
            stats.out_bytes,
        ],
        exact,
    )
}

fn large_columns(values: &[u64], exact: bool) -> String {
    values.iter().map(|&v| large_number(v, exact)).collect()
}

/// ipvsadm's `print_largenum`: 9 characters, right-aligned, with a K/M/G/T suffix (powers of
/// 1000) once the number has more than 8 digits; with `--exact` the full number, widened as needed.
fn large_number(n: u64, exact: bool) -> String {
    if exact {
        let digits = n.to_string();
        let width = if digits.len() <= 8 {
            9
        } else {
            digits.len() + 1
        };
        return format!("{digits:>width$}");
    }
    match n {
        0..100_000_000 => format!("{n:>9}"),
        100_000_000..1_000_000_000 => format!("{:>8}K", n / 1_000),
        1_000_000_000..100_000_000_000 => format!("{:>8}M", n / 1_000_000),
        100_000_000_000..100_000_000_000_000 => format!("{:>8}G", n / 1_000_000_000),
        _ => format!("{:>8}T", n / 1_000_000_000_000),
    }
}

fn truncate(text: &mut String, chars: usize) {
    if let Some((at, _)) = text.char_indices().nth(chars) {
        text.truncate(at);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        state::{DesiredState, Persistence, RealServer, Scheduler, ServiceAddr},
        status::Rates,
    };

    fn numeric() -> ListOptions {
        ListOptions {
            numeric: true,
            ..ListOptions::default()
        }
    }

    fn no_names(_: IpAddr) -> Option<String> {
        None
    }

    fn tcp(addr: &str, port: u16) -> ServiceAddr {
        ServiceAddr {
            protocol: Protocol::Tcp,
            addr: addr.parse().expect("test address"),
            port,
        }
    }

    fn real(addr: &str, port: u16, forwarding: Forwarding, weight: u32) -> RealListing {
        RealListing::idle(&RealServer {
            addr: addr.parse().expect("test address"),
            port,
            forwarding,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        })
    }

    fn service(
        addr: ServiceAddr,
        persistence: Option<Persistence>,
        reals: Vec<RealListing>,
    ) -> ServiceListing {
        ServiceListing {
            addr,
            scheduler: Scheduler::Maglev,
            sched_flags: Default::default(),
            persistence,
            stats: Stats::default(),
            rates: Rates::default(),
            reals,
            settled: false,
        }
    }

    /// Services and servers out of order, so that sorting shows.
    fn sample() -> Listing {
        let dns6 = ServiceAddr {
            protocol: Protocol::Udp,
            ..tcp("2001:db8::1", 53)
        };
        Listing {
            services: vec![
                service(
                    dns6,
                    Some(Persistence {
                        timeout_secs: 60,
                        netmask: Netmask::V6Prefix(64),
                    }),
                    vec![real("2001:db8::2", 53, Forwarding::DirectRoute, 1)],
                ),
                service(
                    tcp("10.0.0.1", 443),
                    Some(Persistence {
                        timeout_secs: 360,
                        netmask: Netmask::V4(Ipv4Addr::new(255, 255, 255, 0)),
                    }),
                    vec![],
                ),
                service(
                    tcp("10.0.0.1", 80),
                    None,
                    vec![
                        real("10.0.0.3", 80, Forwarding::Tunnel, 2),
                        RealListing {
                            active_conns: 3,
                            inactive_conns: 10,
                            ..real("10.0.0.2", 80, Forwarding::DirectRoute, 1)
                        },
                    ],
                ),
            ],
        }
    }

    /// One service with one server and the given counters.
    fn counted(stats: Stats, rates: Rates) -> Listing {
        let web = real("10.0.0.2", 80, Forwarding::DirectRoute, 1);
        Listing {
            services: vec![ServiceListing {
                stats,
                rates,
                ..service(
                    tcp("10.0.0.1", 80),
                    None,
                    vec![RealListing {
                        stats,
                        rates,
                        ..web
                    }],
                )
            }],
        }
    }

    #[test]
    fn scheduler_flags_are_listed_in_parentheses_before_persistence() {
        let listing = Listing {
            services: vec![
                ServiceListing {
                    scheduler: Scheduler::SourceHash,
                    sched_flags: crate::state::SchedFlags {
                        fallback: true,
                        port: true,
                    },
                    ..service(
                        tcp("10.0.0.1", 80),
                        Some(Persistence {
                            timeout_secs: 300,
                            netmask: Netmask::V4(Ipv4Addr::new(255, 255, 255, 0)),
                        }),
                        vec![],
                    )
                },
                ServiceListing {
                    scheduler: Scheduler::WeightedRoundRobin,
                    ..service(tcp("10.0.0.2", 80), None, vec![])
                },
            ],
        };
        let text = format_listing(&listing, &numeric(), no_names).expect("listing");
        assert!(
            text.contains(
                "TCP  10.0.0.1:80 sh (sh-fallback,sh-port) persistent 300 mask 255.255.255.0\n"
            ),
            "{text}"
        );
        assert!(text.contains("TCP  10.0.0.2:80 wrr\n"), "{text}");
    }

    #[test]
    fn the_connection_schedulers_are_listed_by_their_ipvsadm_names() {
        let schedulers = [
            Scheduler::ShortestExpectedDelay,
            Scheduler::NeverQueue,
            Scheduler::WeightedFailover,
            Scheduler::Overflow,
        ];
        let listing = Listing {
            services: schedulers
                .iter()
                .enumerate()
                .map(|(i, scheduler)| ServiceListing {
                    scheduler: *scheduler,
                    ..service(tcp(&format!("10.0.0.{}", i + 1), 80), None, vec![])
                })
                .collect(),
        };
        let text = format_listing(&listing, &numeric(), no_names).expect("listing");
        for (i, name) in ["sed", "nq", "fo", "ovf"].iter().enumerate() {
            assert!(
                text.contains(&format!("TCP  10.0.0.{}:80 {name}\n", i + 1)),
                "{text}"
            );
        }
    }

    #[test]
    fn list_numeric_matches_ipvsadms_layout() {
        assert_eq!(
            format_listing(&sample(), &numeric(), no_names).expect("listing"),
            "IP Virtual Server version 1.2.1 (size=4096)\n\
             Prot LocalAddress:Port Scheduler Flags\n\
             \x20 -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
             TCP  10.0.0.1:80 mh\n\
             \x20 -> 10.0.0.2:80                  Route   1      3          10        \n\
             \x20 -> 10.0.0.3:80                  Tunnel  2      0          0         \n\
             TCP  10.0.0.1:443 mh persistent 360 mask 255.255.255.0\n\
             UDP  [2001:db8::1]:53 mh persistent 60 mask 64\n\
             \x20 -> [2001:db8::2]:53             Route   1      0          0         \n"
        );
    }

    #[test]
    fn an_empty_table_lists_only_the_headers() {
        assert_eq!(
            format_listing(&Listing::default(), &numeric(), no_names).expect("listing"),
            "IP Virtual Server version 1.2.1 (size=4096)\n\
             Prot LocalAddress:Port Scheduler Flags\n\
             \x20 -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        );
    }

    #[test]
    fn the_timeouts_print_as_ipvsadms_list_timeout() {
        assert_eq!(
            format_timeouts(&ConnectionTimeouts::default()),
            "Timeout (tcp tcpfin udp): 900 120 300\n"
        );
    }

    #[test]
    fn nosort_keeps_the_order_given() {
        let options = ListOptions {
            sort: false,
            ..numeric()
        };
        let text = format_listing(&sample(), &options, no_names).expect("listing");
        let first_service = text.lines().nth(3).expect("a service line");
        assert!(first_service.starts_with("UDP  [2001:db8::1]:53"), "{text}");
    }

    #[test]
    fn listing_one_service_drops_the_version_line() {
        let options = ListOptions {
            service: Some(tcp("10.0.0.1", 443)),
            ..numeric()
        };
        assert_eq!(
            format_listing(&sample(), &options, no_names).expect("listing"),
            "Prot LocalAddress:Port Scheduler Flags\n\
             \x20 -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
             TCP  10.0.0.1:443 mh persistent 360 mask 255.255.255.0\n"
        );
    }

    #[test]
    fn listing_a_missing_service_says_no_such_service() {
        let options = ListOptions {
            service: Some(tcp("10.0.0.9", 80)),
            ..numeric()
        };
        let err = format_listing(&sample(), &options, no_names).expect_err("missing");
        assert_eq!(err.to_string(), "No such service");
    }

    #[test]
    fn the_connection_table_is_listed_in_ipvsadms_layout() {
        let options = ListOptions {
            connections: true,
            ..numeric()
        };
        assert_eq!(
            format_listing(&sample(), &options, no_names),
            Err(ListError::Connections)
        );
        let conns = [ConnectionListing {
            protocol: Protocol::Tcp,
            expire_secs: 899,
            state: "ESTABLISHED".into(),
            source: "10.0.0.2:45678".parse().expect("addr"),
            virtual_addr: "10.0.0.100:80".parse().expect("addr"),
            destination: "10.0.0.11:80".parse().expect("addr"),
        }];
        assert_eq!(
            format_connections(&conns, &options, no_names),
            "IPVS connection entries\n\
             pro expire state       source             virtual            destination\n\
             TCP 14:59  ESTABLISHED 10.0.0.2:45678     10.0.0.100:80      10.0.0.11:80\n"
        );
    }

    #[test]
    fn stats_match_ipvsadms_columns_and_abbreviate_large_numbers() {
        let stats = Stats {
            conns: 12,
            in_pkts: 345,
            out_pkts: 0,
            in_bytes: 123_456_789,
            out_bytes: 0,
        };
        let options = ListOptions {
            stats: true,
            ..numeric()
        };
        assert_eq!(
            format_listing(&counted(stats, Rates::default()), &options, no_names).expect("listing"),
            "IP Virtual Server version 1.2.1 (size=4096)\n\
             Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n\
             \x20 -> RemoteAddress:Port\n\
             TCP  10.0.0.1:80                        12      345        0  123456K        0\n\
             \x20 -> 10.0.0.2:80                        12      345        0  123456K        0\n"
        );
    }

    #[test]
    fn exact_prints_large_numbers_in_full() {
        let stats = Stats {
            conns: 12,
            in_pkts: 345,
            out_pkts: 0,
            in_bytes: 123_456_789,
            out_bytes: 0,
        };
        let options = ListOptions {
            stats: true,
            exact: true,
            ..numeric()
        };
        let text =
            format_listing(&counted(stats, Rates::default()), &options, no_names).expect("listing");
        assert_eq!(
            text.lines().nth(3),
            Some("TCP  10.0.0.1:80                        12      345        0 123456789        0")
        );
    }

    #[test]
    fn rates_match_ipvsadms_columns() {
        let rates = Rates {
            cps: 5,
            in_pps: 40,
            out_pps: 0,
            in_bps: 2_500_000_000,
            out_bps: 0,
        };
        let options = ListOptions {
            rate: true,
            ..numeric()
        };
        assert_eq!(
            format_listing(&counted(Stats::default(), rates), &options, no_names).expect("listing"),
            "IP Virtual Server version 1.2.1 (size=4096)\n\
             Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n\
             \x20 -> RemoteAddress:Port\n\
             TCP  10.0.0.1:80                         5       40        0    2500M        0\n\
             \x20 -> 10.0.0.2:80                         5       40        0    2500M        0\n"
        );
    }

    #[test]
    fn thresholds_match_ipvsadms_columns() {
        let mut listing = counted(Stats::default(), Rates::default());
        listing.services[0].reals[0] = RealListing {
            upper_threshold: 100,
            lower_threshold: 50,
            active_conns: 3,
            inactive_conns: 10,
            ..real("10.0.0.2", 80, Forwarding::DirectRoute, 1)
        };
        let options = ListOptions {
            thresholds: true,
            service: Some(tcp("10.0.0.1", 80)),
            ..numeric()
        };
        assert_eq!(
            format_listing(&listing, &options, no_names).expect("listing"),
            "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn \n\
             \x20 -> RemoteAddress:Port\n\
             TCP  10.0.0.1:80 mh\n\
             \x20 -> 10.0.0.2:80                  100        50         3          10        \n"
        );
    }

    #[test]
    fn persistent_connections_match_ipvsadms_columns() {
        let mut listing = counted(Stats::default(), Rates::default());
        listing.services[0].reals[0] = RealListing {
            persistent_conns: 7,
            active_conns: 3,
            inactive_conns: 10,
            ..real("10.0.0.2", 80, Forwarding::DirectRoute, 1)
        };
        let options = ListOptions {
            persistent_conn: true,
            service: Some(tcp("10.0.0.1", 80)),
            ..numeric()
        };
        assert_eq!(
            format_listing(&listing, &options, no_names).expect("listing"),
            "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn \n\
             \x20 -> RemoteAddress:Port\n\
             TCP  10.0.0.1:80 mh\n\
             \x20 -> 10.0.0.2:80                  1         7           3          10        \n"
        );
    }

    #[test]
    fn without_numeric_names_replace_addresses_and_ports_and_are_cut_to_fit() {
        let listing = Listing {
            services: vec![service(
                tcp("10.0.0.1", 80),
                None,
                vec![
                    real("10.0.0.2", 80, Forwarding::DirectRoute, 1),
                    real("10.0.0.3", 80, Forwarding::DirectRoute, 1),
                ],
            )],
        };
        let resolve = |addr: IpAddr| match addr.to_string().as_str() {
            "10.0.0.1" => Some("lb.example.com".to_owned()),
            "10.0.0.2" => Some("a-very-long-host-name.example.com".to_owned()),
            _ => None,
        };
        let options = ListOptions {
            service: Some(tcp("10.0.0.1", 80)),
            ..ListOptions::default()
        };
        let text = format_listing(&listing, &options, resolve).expect("listing");
        assert_eq!(
            text.lines().skip(2).collect::<Vec<_>>().join("\n"),
            "TCP  lb.example.com:http mh\n\
             \x20 -> a-very-long-host-name.exampl Route   1      0          0         \n\
             \x20 -> 10.0.0.3:http                Route   1      0          0         "
        );
    }

    #[test]
    fn numeric_never_asks_the_resolver() {
        let text = format_listing(&sample(), &numeric(), |_| panic!("resolver called with -n"))
            .expect("listing");
        assert!(text.contains("10.0.0.1:80"));
    }

    #[test]
    fn large_numbers_abbreviate_at_ipvsadms_thresholds() {
        let cases = [
            (99_999_999, " 99999999", " 99999999"),
            (100_000_000, "  100000K", " 100000000"),
            (999_999_999, "  999999K", " 999999999"),
            (1_000_000_000, "    1000M", " 1000000000"),
            (99_999_999_999, "   99999M", " 99999999999"),
            (100_000_000_000, "     100G", " 100000000000"),
            (99_999_999_999_999, "   99999G", " 99999999999999"),
            (100_000_000_000_000, "     100T", " 100000000000000"),
        ];
        for (n, short, exact) in cases {
            assert_eq!(large_number(n, false), short, "{n}");
            assert_eq!(large_number(n, true), exact, "{n} --exact");
        }
    }

    #[test]
    fn a_listing_of_the_desired_state_starts_idle() {
        let mut state = DesiredState::default();
        let web = tcp("10.0.0.1", 80);
        state
            .add_service(web, Scheduler::Maglev, None)
            .expect("service");
        let server = RealServer {
            addr: "10.0.0.2".parse().expect("ip"),
            port: 80,
            forwarding: Forwarding::DirectRoute,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
        };
        state.add_real(&web, server).expect("real");
        assert_eq!(
            Listing::from_state(&state),
            Listing {
                services: vec![service(
                    web,
                    None,
                    vec![real("10.0.0.2", 80, Forwarding::DirectRoute, 1)]
                )]
            }
        );
    }
}
