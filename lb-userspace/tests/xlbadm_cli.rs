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
