//! scripts/xlb-realserver, driven by its own test script in a namespace of its own (the script
//! test checks up/down/status/doctor and that down restores exactly what up changed).

use std::{path::Path, process::Command};

use xlb_tests::root;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn xlb_realserver_sets_up_a_real_server_and_restores_exactly_what_it_changed() {
    root::require();
    let script = repo().join("tests/realserver/test-xlb-realserver.sh");
    let out = Command::new("timeout")
        .arg("120")
        .arg("bash")
        .arg(&script)
        .env("XLB_REALSERVER", repo().join("scripts/xlb-realserver"))
        .output()
        .expect("run the xlb-realserver test script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the script test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with(" 0 failed"), "unexpected summary: {last}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_shell_scripts_are_shellcheck_clean() {
    root::require();
    let out = Command::new("shellcheck")
        .arg(repo().join("scripts/xlb-realserver"))
        .arg(repo().join("scripts/xlb-demo"))
        .arg(repo().join("scripts/xlb-vrrp-check"))
        .arg(repo().join("scripts/bird/xlb-bird-health"))
        .arg(repo().join("tests/realserver/test-xlb-realserver.sh"))
        .arg(repo().join("packaging/debian/postinst"))
        .arg(repo().join("packaging/debian/prerm"))
        .output()
        .expect("run shellcheck (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
