//! A sample of the fuzzing run (`cargo xtask fuzz` runs a million frames): generated frames
//! through BPF_PROG_TEST_RUN, each compared with the reference model of the README's table.

use xlb_tests::{fuzz, root};

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn generated_frames_get_exactly_what_the_model_of_the_readme_says() {
    root::require();
    let bench = fuzz::Bench::new();
    let report = fuzz::run(&bench, 30_000, 0x786c_6221);
    println!("{report}");
    assert!(
        report.forwarded > 1_000 && report.passed > 1_000 && report.dropped > 1_000,
        "{report}"
    );
    assert!(
        report.answered > 100,
        "too few frames too big for the tunnel: {report}"
    );
    assert_eq!(report.aborted, 0, "{report}");
    assert_eq!(report.rewritten_not_for_a_service, 0, "{report}");
    assert_eq!(report.mismatches, 0, "{report}");
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn generated_frames_are_decapsulated_exactly_when_the_model_says() {
    root::require();
    let bench = fuzz::DecapBench::new();
    let report = fuzz::run_decap(&bench, 10_000, 0x786c_6221);
    println!("{report}");
    assert!(
        report.forwarded > 1_000,
        "too few frames decapsulated: {report}"
    );
    assert_eq!(report.aborted, 0, "{report}");
    assert_eq!(report.mismatches, 0, "{report}");
}
