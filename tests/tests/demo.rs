//! The demo lab (scripts/xlb-demo, run by `cargo xtask demo`): it comes up, serves traffic through
//! both of its services, and goes down leaving no namespace, link, mount or pin behind.

use std::process::Command;

use xlb_tests::{daemon::binary, netns::run_sh, root};

fn demo(verb: &str, name: &str) -> std::process::Output {
    Command::new("timeout")
        .args([
            "120",
            "bash",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/xlb-demo"),
            verb,
        ])
        .env("XLBD", binary("xlbd"))
        .env("XLBADM", binary("xlbadm"))
        .env("XLB_DEMO_NAME", name)
        // Run by root itself, as in a container without sudo.
        .env_remove("SUDO_USER")
        .output()
        .expect("run xlb-demo")
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn the_demo_serves_both_services_and_leaves_nothing_behind() {
    root::require();
    let name = format!("xdt{}", std::process::id());
    let up = demo("up", &name);
    let text = String::from_utf8_lossy(&up.stdout).into_owned();
    let down = demo("down", &name);
    assert!(
        up.status.success(),
        "xlb-demo up failed:\n{text}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(down.status.success(), "xlb-demo down failed");
    assert!(!text.contains("(failed)"), "requests failed:\n{text}");
    for server in ["Hello from rs1", "Hello from rs2", "Hello from rs3"] {
        assert!(text.contains(server), "{server} never answered:\n{text}");
    }
    assert!(text.contains("Route") && text.contains("Tunnel"), "{text}");
    assert!(
        text.contains("Try it:") && !text.contains("sudo"),
        "root is told to use sudo:\n{text}"
    );

    let namespaces = String::from_utf8_lossy(&run_sh("ip netns list").stdout).into_owned();
    assert!(!namespaces.contains(&name), "namespaces left: {namespaces}");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(!mounts.contains(&name), "mounts left: {mounts}");
    assert!(
        !std::path::Path::new(&format!("/run/{name}")).exists(),
        "state left"
    );
    let links = String::from_utf8_lossy(&run_sh("ip -o link").stdout).into_owned();
    assert!(!links.contains("xd"), "links left: {links}");
}
