//! A short soak (45 s) of the same code as `cargo xtask soak`: client load through the DR lab
//! while a flapping server crashes and is drained, weights change by xlbadm, SIGHUP and
//! `xlbadm --reload`, a service is added and removed, and xlbd restarts. No request to a steady
//! server fails, none to a flapping server outside its flaps, and xlbd's descriptors and threads
//! do not grow. Its memory (90 s of warm-up per process) and the connection table (120 s for its
//! closing entries to settle) are judged only by longer runs: `cargo xtask soak`.

use std::{sync::atomic::AtomicBool, time::Duration};

use xlb_tests::{
    root,
    soak::{self, Class, Plan},
};

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_short_soak_fails_no_request_to_a_healthy_server_and_xlbd_stays_flat() {
    root::require();
    let plan = Plan::new(Duration::from_secs(45), 0x736f_616b);
    let report = soak::run(&plan, &AtomicBool::new(false));
    eprint!("{report}");
    assert!(report.passed(), "a goal failed:\n{report}");
    for event in [
        "crashes",
        "drains",
        "weight changes",
        "services added",
        "services removed",
        "reloads by SIGHUP",
        "reloads by xlbadm --reload",
        "xlbadm changes",
        "restarts",
    ] {
        assert!(
            report.events.contains_key(event),
            "no {event} in the churn:\n{report}"
        );
    }
    for class in [
        Class::Steady,
        Class::SteadyKeepAlive,
        Class::Flapping,
        Class::Transient,
    ] {
        let requests = report
            .attribution
            .classes
            .get(&class)
            .map_or(0, |c| c.requests);
        assert!(
            requests > 20,
            "only {requests} {class:?} requests:\n{report}"
        );
    }
}
