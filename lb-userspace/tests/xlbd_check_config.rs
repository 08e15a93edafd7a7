//! `xlbd --check-config` as an operator runs it before a start or a reload: no root, no BPF, no
//! interface; the exit code and every mistake with its file, line and field.

use std::{path::PathBuf, process::Command};

/// Runs `xlbd --check-config --config FILE` on `text`: exit code, stdout, stderr.
fn check(name: &str, text: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("xlbd-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write the configuration");
    let out = run(&file);
    let _ = std::fs::remove_file(&file);
    out
}

fn run(file: &PathBuf) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xlbd"))
        .arg("--check-config")
        .arg("--config")
        .arg(file)
        // Nothing may be touched: a pin directory that cannot exist proves no BPF was loaded.
        .env("XLB_PIN_DIR", "/nonexistent/xlb")
        .output()
        .expect("run xlbd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_configuration_is_valid_with_a_one_line_summary() {
    let example = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/xlb.toml"));
    let (code, out, err) = run(&example);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.trim_end()
            .ends_with("xlb.toml: valid: 1 service, 2 real servers"),
        "{out}"
    );
}

#[test]
fn an_empty_configuration_is_valid_and_has_no_services() {
    let (code, out, err) = check("empty.toml", "# nothing yet\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid: 0 services, 0 real servers"), "{out}");
}

#[test]
fn every_mistake_is_named_with_its_file_line_and_field() {
    let service = |vip: &str| {
        format!(
            "[[services]]\n[services.addr]\nprotocol = \"tcp\"\naddr = \"{vip}\"\nport = 80\n\
             [[services.reals]]\naddr = \"10.0.0.2\"\nport = 80\nweight = 70000\n"
        )
    };
    let text = format!("{}{}", service("10.0.0.1"), service("10.0.0.9"));
    let (code, out, err) = check("two-mistakes.toml", &text);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains("two-mistakes.toml:9:1: services[0].reals[0].weight: "),
        "{err}"
    );
    assert!(
        lines[1].contains("two-mistakes.toml:18:1: services[1].reals[0].weight: "),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.ends_with("illegal weight specified")),
        "{err}"
    );
}

#[test]
fn a_malformed_configuration_is_refused_at_its_line() {
    let (code, _, err) = check("typo.toml", "[[services]]\nschedular = \"mh\"\n");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("typo.toml:2:1: services[0].schedular: unknown field `schedular`"),
        "{err}"
    );
}

#[test]
fn a_missing_configuration_is_an_error_when_checked() {
    let (code, _, err) = run(&PathBuf::from("/nonexistent/xlb.toml"));
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/xlb.toml"), "{err}");
}
