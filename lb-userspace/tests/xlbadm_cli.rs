//! xlbadm as a user meets it without a daemon: help, bad arguments, no daemon.

use std::process::Command;

fn xlbadm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xlbadm"))
        .args(args)
        .env("XLB_SOCKET", "/nonexistent/xlb.sock")
        .output()
        .expect("run xlbadm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn without_a_daemon_xlbadm_says_xlbd_is_not_running() {
    let (code, _, err) = xlbadm(&["-L", "-n"]);
    assert_eq!(code, 1);
    assert!(err.contains("xlbd is not running"), "{err}");
}

#[test]
fn a_bad_option_combination_exits_2_before_any_contact_with_the_daemon() {
    let (code, _, err) = xlbadm(&["-A", "-t", "10.0.0.1:80", "-g"]);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("not running"), "{err}");
}

#[test]
fn an_unknown_scheduler_is_rejected_with_the_supported_ones() {
    // A scheduler of ipvsadm's that xlb lacks is refused before any contact with the daemon,
    // naming the ones it has; one xlb has gets as far as the (missing) daemon.
    let (code, _, err) = xlbadm(&["-A", "-t", "10.0.0.1:80", "-s", "lblc"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not implement the 'lblc'"), "{err}");
    assert!(err.contains("mh") && err.contains("ovf"), "{err}");
    let (code, _, err) = xlbadm(&["-A", "-t", "10.0.0.1:80", "-s", "sed"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("xlbd is not running"), "{err}");
}

#[test]
fn help_prints_the_usage_and_succeeds() {
    let (code, out, _) = xlbadm(&["-h"]);
    assert_eq!(code, 0);
    assert!(out.contains("--add-service"), "{out}");
}

#[test]
fn the_socket_flag_overrides_the_environment() {
    let (code, _, err) = xlbadm(&["--socket", "/nonexistent/other.sock", "-L", "-n"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/other.sock"), "{err}");
}

/// A stand-in for an xlbd older than the request for one service's listing: it answers that
/// request as such an xlbd does (it cannot read it) and the whole listing with two services.
#[test]
fn against_an_older_xlbd_one_services_listing_asks_for_the_whole_listing_and_shows_its_part() {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        os::unix::net::UnixListener,
    };

    use lb_userspace::{
        control::Response, ipvsadm::save::parse_restore, state::DesiredState, status::Listing,
    };

    let dir = std::env::temp_dir().join(format!("xlbadm-older-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let socket = dir.join("xlb.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let mut state = DesiredState::default();
    let rules = "-A -t 10.0.0.1:80 -s mh\n-a -t 10.0.0.1:80 -r 10.0.0.11:80 -g -w 1\n\
                 -A -t 10.0.0.2:80 -s rr\n-a -t 10.0.0.2:80 -r 10.0.0.21:80 -g -w 2\n";
    for (_, change) in parse_restore(rules).expect("rules") {
        state.apply(&change).expect("applied");
    }
    let listing =
        serde_json::to_string(&Response::Listing(Listing::from_state(&state))).expect("serialized");
    let daemon = std::thread::spawn(move || {
        let mut asked = Vec::new();
        // xlbadm connects once per request: the one it tries, then the older one.
        for _ in 0..2 {
            let (stream, _) = listener.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).expect("read");
            let request: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            let answer = if request.get("list_service").is_some() {
                // Word for word what serde makes of a variant the older enum lacks.
                r#"{"error":{"message":"malformed request: unknown variant `list_service`, expected one of `change`, `changes`, `restore`, `reload`, `state`, `list`, `connections`, `zero`, `flush_connections`, `debug_events` at line 1 column 15","exit_code":255}}"#.to_owned()
            } else {
                listing.clone()
            };
            (&stream)
                .write_all(format!("{answer}\n").as_bytes())
                .expect("answer");
            asked.push(request);
        }
        asked
    });
    let out = Command::new(env!("CARGO_BIN_EXE_xlbadm"))
        .args(["-L", "-n", "-t", "10.0.0.2:80"])
        .env("XLB_SOCKET", &socket)
        .output()
        .expect("run xlbadm");
    let asked = daemon.join().expect("the stand-in daemon");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked[0].get("list_service").is_some(), "{asked:?}");
    assert_eq!(asked[1], serde_json::json!("list"), "{asked:?}");
    assert!(stdout.contains("TCP  10.0.0.2:80 rr"), "{stdout}");
    assert!(stdout.contains("10.0.0.21:80"), "{stdout}");
    assert!(
        !stdout.contains("10.0.0.1:80"),
        "only the service asked for:\n{stdout}"
    );
}
