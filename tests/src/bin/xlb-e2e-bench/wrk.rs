//! Running wrk from the client's namespace and reading its report: requests per second, the
//! latency percentiles of `--latency`, and the errors it counted.

use std::time::Duration;

use anyhow::{bail, Context as _};
use xlb_tests::netns::Netns;

/// How the client's requests use their connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionUse {
    /// HTTP/1.1 keep-alive: each of wrk's connections carries request after request.
    KeepAlive,
    /// `Connection: close`: every request opens (and the server closes) a connection of its own.
    NewPerRequest,
}

impl ConnectionUse {
    /// Both, in the order the table prints them.
    pub const ALL: [Self; 2] = [Self::KeepAlive, Self::NewPerRequest];

    /// As the table's header names it.
    pub fn label(self) -> &'static str {
        match self {
            Self::KeepAlive => "keep-alive",
            Self::NewPerRequest => "new connection per request",
        }
    }
}

/// What wrk runs: how long, with how many connections and threads.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Length of one run.
    pub duration: Duration,
    /// Connections kept busy at once.
    pub connections: u32,
    /// wrk's threads.
    pub threads: u32,
}

/// One run's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Report {
    /// Completed requests per second.
    pub requests_per_s: f64,
    /// Median latency, in microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, in microseconds.
    pub p99_us: f64,
    /// Socket errors (connect, read, write, timeout) and answers other than 2xx/3xx.
    pub errors: u64,
}

/// Runs wrk in `client` against `url` and reads its report.
pub fn run(client: &Netns, url: &str, load: Load, use_: ConnectionUse) -> anyhow::Result<Report> {
    let mut cmd = client.command("wrk");
    cmd.args([
        "--latency",
        "--timeout",
        "2s",
        "-t",
        &load.threads.to_string(),
        "-c",
        &load.connections.to_string(),
        "-d",
        &format!("{}s", load.duration.as_secs().max(1)),
    ]);
    if use_ == ConnectionUse::NewPerRequest {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk against {url} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text).with_context(|| format!("reading wrk's report on {url}:\n{text}"))
}

/// Reads wrk's `--latency` report.
pub fn parse(text: &str) -> anyhow::Result<Report> {
    let mut requests_per_s = None;
    let mut p50_us = None;
    let mut p99_us = None;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Requests/sec:") => {
                requests_per_s = words.next().and_then(|w| w.parse().ok());
            }
            Some("50%") => p50_us = words.next().and_then(microseconds),
            Some("99%") => p99_us = words.next().and_then(microseconds),
            Some("Socket") => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                errors += line
                    .split([',', ' '])
                    .filter_map(|w| w.parse::<u64>().ok())
                    .sum::<u64>();
            }
            Some("Non-2xx") => {
                errors += line
                    .rsplit(' ')
                    .next()
                    .and_then(|w| w.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    Ok(Report {
        requests_per_s: requests_per_s.context("no Requests/sec line")?,
        p50_us: p50_us.context("no 50% latency line (wrk --latency)")?,
        p99_us: p99_us.context("no 99% latency line (wrk --latency)")?,
        errors,
    })
}

/// wrk's durations ("812.00us", "1.23ms", "2.00s", "1.00m") in microseconds.
fn microseconds(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP_ALIVE: &str = "Running 5s test @ http://10.79.0.11:80/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  310.44us   9.87ms   91.02%
    Req/Sec    31.62k     1.90k   34.75k    80.00%
  Latency Distribution
     50%  812.00us
     75%    1.10ms
     90%    1.32ms
     99%    2.05ms
  157362 requests in 5.00s, 24.46MB read
Requests/sec:  31459.67
Transfer/sec:      4.89MB
";

    #[test]
    fn a_clean_report_gives_the_rate_and_the_percentiles_in_microseconds() {
        let report = parse(KEEP_ALIVE).expect("parses");
        assert_eq!(
            report,
            Report {
                requests_per_s: 31459.67,
                p50_us: 812.0,
                p99_us: 2050.0,
                errors: 0,
            }
        );
    }

    #[test]
    fn socket_errors_and_bad_answers_are_counted() {
        let text = format!(
            "{KEEP_ALIVE}  Socket errors: connect 3, read 10, write 0, timeout 2\n  \
             Non-2xx or 3xx responses: 4\n"
        );
        assert_eq!(parse(&text).expect("parses").errors, 19);
    }

    #[test]
    fn a_report_without_percentiles_is_refused() {
        let text = "Requests/sec:  100.00\n";
        assert!(parse(text).is_err());
    }

    #[test]
    fn every_unit_wrk_prints_converts_to_microseconds() {
        assert_eq!(microseconds("812.00us"), Some(812.0));
        assert_eq!(microseconds("1.50ms"), Some(1500.0));
        assert_eq!(microseconds("2.00s"), Some(2e6));
        assert_eq!(microseconds("1.00m"), Some(60e6));
        assert_eq!(microseconds("7"), None);
    }
}
