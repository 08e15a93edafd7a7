//! Reloading xlbd's configuration end to end, under a client that requests continuously (a new
//! connection per request, every answer counted): a reload by SIGHUP and one by
//! `xlbadm --reload` add a server, remove one, change weights and checks, and no request fails;
//! the servers whose check did not change are not checked up again; a broken file is refused
//! whole (the same `-S` before and after, the mistake's line and field in the answer and the
//! log); a restart with an edited file adopts the running balancer and then applies the file.
//! The files alternate between the configuration's two forms (`address = "VIP:PORT"` and a real
//! server's check in its table, or the first form's tables), and `xlbd --check-config` takes both.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use xlb_tests::{
    daemon::Daemon,
    lab::{real_addr, DrLab, VIP},
    root,
};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// A configuration of the VIP's port 80 service with an HTTP check (500 ms interval) and the
/// real servers `reals` (index, weight, own check if any), in the file's address form or, with
/// `first_form`, in its first form (an addr table, addr and port, real_checks).
fn config(first_form: bool, reals: &[(usize, u32, Option<&str>)]) -> String {
    let check = "interval = \"500ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n";
    let mut text = if first_form {
        format!(
            "[[services]]\nscheduler = \"mh\"\n[services.addr]\nprotocol = \"tcp\"\n\
             addr = \"{VIP}\"\nport = 80\n"
        )
    } else {
        format!("[[services]]\naddress = \"{VIP}:80\"\nscheduler = \"mh\"\n")
    };
    text.push_str(&format!(
        "[services.health.check]\nkind = \"http\"\npath = \"/\"\n{check}"
    ));
    for (i, weight, own) in reals {
        let addr = real_addr(*i);
        if let (true, Some(kind)) = (first_form, own) {
            text.push_str(&format!(
                "[services.real_checks.\"{addr}:80\"]\nkind = \"{kind}\"\n"
            ));
        }
        if first_form {
            text.push_str(&format!(
                "[[services.reals]]\naddr = \"{addr}\"\nport = 80\nweight = {weight}\n"
            ));
        } else {
            text.push_str(&format!(
                "[[services.reals]]\naddress = \"{addr}:80\"\nweight = {weight}\n"
            ));
            if let Some(kind) = own {
                text.push_str(&format!("[services.reals.check]\nkind = \"{kind}\"\n"));
            }
        }
    }
    text
}

/// Waits until `-S -n` shows what `expected` says (each line present), or panics after 10 s.
fn wait_applied(daemon: &Daemon<'_>, expected: &[String], absent: &[String]) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let saved = daemon.adm_ok(&["-S", "-n"]);
        if expected.iter().all(|l| saved.contains(l.as_str()))
            && !absent.iter().any(|l| saved.contains(l.as_str()))
        {
            return now();
        }
        assert!(
            Instant::now() < deadline,
            "not applied within 10 s: {expected:?} without {absent:?} in:\n{saved}\nlog:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `-a` line of `-S -n` for real server `i` with `weight`.
fn real_line(i: usize, weight: u32) -> String {
    format!("-a -t {VIP}:80 -r {}:80 -g -w {weight}", real_addr(i))
}

/// The health state `-L -n --health` shows for real server `i`.
fn health(daemon: &Daemon<'_>, i: usize) -> String {
    let listing = daemon.adm_ok(&["-L", "-n", "--health"]);
    let addr = format!("{}:80", real_addr(i));
    let line = listing
        .lines()
        .find(|l| l.contains(&addr))
        .unwrap_or_else(|| panic!("rs{} is not listed:\n{listing}", i + 1));
    ["unknown", "down", "up"]
        .into_iter()
        .find(|state| line.split_whitespace().any(|w| w == *state))
        .unwrap_or_else(|| panic!("no state in {line}"))
        .to_owned()
}

fn wait_up(daemon: &Daemon<'_>, reals: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while reals.iter().any(|&i| health(daemon, i) != "up") {
        assert!(
            Instant::now() < deadline,
            "not all up:\n{}",
            daemon.adm_ok(&["-L", "-n", "--health"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many times the log says that real server `i` came up.
fn rises(log: &str, i: usize) -> usize {
    let real = format!("real={}:80", real_addr(i));
    log.lines()
        .filter(|l| l.contains("real server is up") && l.contains(&real))
        .count()
}

/// A client requesting the VIP until a stop file appears, a new connection per request, each
/// answer (or FAILED) on a line with its time.
struct Load {
    child: Child,
    stop: PathBuf,
}

impl Load {
    fn start(lab: &DrLab) -> Self {
        let stop = std::env::temp_dir().join(format!("{}-stop", lab.client.name()));
        let _ = std::fs::remove_file(&stop);
        let child = lab
            .client
            .command("sh")
            .args([
                "-c",
                &format!(
                    "while [ ! -e {stop} ]; do printf '%s ' $(date +%s.%N); \
                     curl -s --max-time 2 http://{VIP}/ || echo FAILED; sleep 0.02; done",
                    stop = stop.display()
                ),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the client");
        Self { child, stop }
    }

    /// Stops the client; every request's (time, answer).
    fn finish(self) -> Vec<(f64, String)> {
        std::fs::write(&self.stop, "").expect("stop file");
        let out = self.child.wait_with_output().expect("client");
        let _ = std::fs::remove_file(&self.stop);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                let (t, answer) = line.split_once(' ').unwrap_or((line, ""));
                (t.parse().expect("a time stamp"), answer.trim().to_owned())
            })
            .collect()
    }
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn reloads_under_load_change_only_the_difference_and_a_broken_file_changes_nothing() {
    root::require();
    let lab = DrLab::new(4);
    let v1 = config(true, &[(0, 1, None), (1, 1, None), (2, 1, None)]);
    for first_form in [true, false] {
        let dir = std::env::temp_dir().join(format!("{}-check", lab.balancer.name()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("xlb.toml");
        std::fs::write(
            &file,
            config(first_form, &[(0, 1, None), (1, 2, Some("tcp"))]),
        )
        .expect("write");
        let out = std::process::Command::new(xlb_tests::daemon::binary("xlbd"))
            .arg("--check-config")
            .arg("--config")
            .arg(&file)
            .output()
            .expect("xlbd --check-config");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}: valid: 1 service, 2 real servers\n", file.display()),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut daemon = Daemon::start_with_config(&lab.balancer, Some(&v1));
    wait_applied(
        &daemon,
        &[real_line(0, 1), real_line(1, 1), real_line(2, 1)],
        &[],
    );
    wait_up(&daemon, &[0, 1, 2]);
    let load = Load::start(&lab);
    std::thread::sleep(Duration::from_millis(1500));

    // SIGHUP: rs1 heavier, rs2 checked by TCP instead, rs3 out, rs4 in.
    daemon.write_config(&config(
        false,
        &[(0, 3, None), (1, 1, Some("tcp")), (3, 1, None)],
    ));
    daemon.signal(libc::SIGHUP);
    let v2_applied = wait_applied(
        &daemon,
        &[real_line(0, 3), real_line(1, 1), real_line(3, 1)],
        &[real_line(2, 1)],
    );
    assert_eq!(health(&daemon, 0), "up", "rs1's check was restarted");
    assert_eq!(
        health(&daemon, 1),
        "up",
        "rs2's state was lost with its check"
    );
    assert!(
        daemon.adm_ok(&["-S", "-n"]).contains("--check tcp"),
        "rs2's own check is not saved"
    );
    std::thread::sleep(Duration::from_millis(1500));

    // xlbadm --reload: weights again, rs2 back to the service's check.
    daemon.write_config(&config(true, &[(0, 1, None), (1, 2, None), (3, 2, None)]));
    let reloaded = daemon.adm_ok(&["--reload"]);
    assert_eq!(reloaded, "reloaded: 3 real servers changed\n");
    // Applied when the answer comes.
    let saved = daemon.adm_ok(&["-S", "-n"]);
    for line in [real_line(0, 1), real_line(1, 2), real_line(3, 2)] {
        assert!(
            saved.contains(&line),
            "{line} missing after --reload:\n{saved}"
        );
    }
    assert!(!saved.contains("--check tcp"), "{saved}");
    wait_up(&daemon, &[0, 1, 3]);
    std::thread::sleep(Duration::from_millis(1500));

    // A broken file: refused whole, with its line and field, by xlbadm and by SIGHUP.
    let before = daemon.adm_ok(&["-S", "-n"]);
    let good = config(false, &[(0, 1, None), (1, 2, None), (3, 2, None)]);
    let broken = config(false, &[(0, 7, None), (1, 2, None), (3, 70000, None)]);
    daemon.write_config(&broken);
    let out = daemon.adm(&["--reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("reload refused, nothing changed")
            && stderr.contains("config.toml:")
            && stderr.contains("services[0].reals[2].weight")
            && stderr.contains("illegal weight"),
        "{stderr}"
    );
    assert_eq!(daemon.adm_ok(&["-S", "-n"]), before);
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.log().matches("reload refused").count() < 2 {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(daemon.adm_ok(&["-S", "-n"]), before);
    let log = daemon.log();
    for i in [0, 1, 3] {
        assert_eq!(rises(&log, i), 1, "rs{} came up again:\n{log}", i + 1);
    }
    std::thread::sleep(Duration::from_millis(1000));

    // A restart with an edited file: the running balancer is adopted, then the file applied.
    daemon.stop();
    daemon.write_config(&good.replace("weight = 1\n", "weight = 4\n"));
    daemon.spawn();
    wait_applied(
        &daemon,
        &[real_line(0, 4), real_line(1, 2), real_line(3, 2)],
        &[],
    );
    let log = daemon.log();
    assert!(
        log.contains("adopted the running state")
            && log.contains("applied the configuration file: 1 real server changed"),
        "{log}"
    );
    std::thread::sleep(Duration::from_millis(1500));

    let answers = load.finish();
    let failed: Vec<&(f64, String)> = answers
        .iter()
        .filter(|(_, a)| !a.starts_with("rs"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}\nxlbd log:\n{}",
        failed.len(),
        answers.len(),
        daemon.log()
    );
    let late_rs3 = answers
        .iter()
        .filter(|(t, a)| a == "rs3" && *t > v2_applied + 0.2)
        .count();
    assert_eq!(late_rs3, 0, "rs3 answered after it was removed");
    let rs4 = answers.iter().filter(|(_, a)| a == "rs4").count();
    assert!(rs4 > 0, "rs4 never answered");
    eprintln!(
        "{} requests, none failed; rs4 answered {rs4}",
        answers.len()
    );
}
