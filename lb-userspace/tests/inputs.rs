//! Property tests of everything an operator types or a file holds (proptest): xlbadm's command
//! lines, `-R` input, the configuration file and control requests. Whatever the input, nothing
//! panics, a refusal is a sentence (no Rust debug dump), and a refused change changes nothing:
//! neither the desired state nor the data path (an in-memory one, with writes that fail).

use std::path::Path;

use lb_userspace::{
    capacity::Capacity,
    config,
    control::Request,
    datapath::fake::FakeDataPath,
    errors::error_chain,
    ipvsadm::{
        parse::{parse, Command},
        save::{restore, save},
    },
    runtime::Runtime,
    state::DesiredState,
};
use proptest::prelude::*;

/// Words that xlbadm's syntax is made of, and some that it is not.
const WORDS: &[&str] = &[
    "-A",
    "-E",
    "-D",
    "-a",
    "-e",
    "-d",
    "-C",
    "-L",
    "-l",
    "-n",
    "-S",
    "-R",
    "-Z",
    "-t",
    "-u",
    "-f",
    "-s",
    "-p",
    "-M",
    "-r",
    "-g",
    "-i",
    "-m",
    "-w",
    "-x",
    "-y",
    "-b",
    "-c",
    "--stats",
    "--rate",
    "--thresholds",
    "--persistent-conn",
    "--timeout",
    "--set",
    "--exact",
    "--check",
    "--check-interval",
    "--check-timeout",
    "--check-rise",
    "--check-fall",
    "--check-port",
    "--check-path",
    "--socket",
    "--sched-flags",
    "mh",
    "rr",
    "wrr",
    "sh",
    "dh",
    "lc",
    "wlc",
    "tcp",
    "http",
    "none",
    "10.0.0.1:80",
    "10.0.0.1",
    "10.0.0.2:8080",
    "10.0.0.11",
    "10.0.0.12:80",
    "[fd00::1]:80",
    "fd00::1",
    "[fd00::2]",
    "1.2.3.4:0",
    "0.0.0.0:80",
    "255.255.255.255:65535",
    "300",
    "0",
    "1",
    "2",
    "-1",
    "65536",
    "99999999999999999999",
    "255.255.255.0",
    "/24",
    "1s",
    "100ms",
    "abc",
    "",
    " ",
    "--",
    "-",
    "ÿ",
    "\u{0}",
    "10.0.0.1:80:80",
    "[fd00::1",
    "fd00::1]:80",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(WORDS).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ]
}

fn command_line() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(word(), 0..10)
}

/// What an operator must never read: a Rust debug rendering.
fn debug_dump(text: &str) -> Option<&'static str> {
    [
        "Some(",
        "None",
        "Err(",
        "Ok(",
        " { ",
        "\\u{",
        "ParseError",
        "StateError",
        "Error {",
    ]
    .into_iter()
    .find(|p| text.contains(p))
}

fn assert_sentence(text: &str) -> Result<(), TestCaseError> {
    prop_assert!(!text.trim().is_empty(), "an empty message");
    if let Some(p) = debug_dump(text) {
        prop_assert!(false, "a debug dump ({p}) in: {text}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Any command line: parsed or refused with a sentence, never a panic.
    #[test]
    fn xlbadm_command_lines_are_parsed_or_refused_with_a_sentence(args in command_line()) {
        if let Err(e) = parse(&args) {
            assert_sentence(&e.to_string())?;
        }
    }

    /// Any `-R` input: all of it restored, or refused with a sentence; what is restored saves
    /// back to text that restores to the same state.
    #[test]
    fn restore_input_is_taken_whole_or_refused_and_round_trips(
        lines in proptest::collection::vec(prop_oneof![command_line(), change_line()], 0..8)
    ) {
        let text: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
        match restore(&DesiredState::default(), &text) {
            Err(e) => assert_sentence(&e.to_string())?,
            Ok(state) => {
                let again = restore(&DesiredState::default(), &save(&state));
                prop_assert_eq!(again.as_ref().ok(), Some(&state), "-S of a restored state: {}", save(&state));
            }
        }
    }

    /// Any configuration file: read, or refused with an error that names the file.
    #[test]
    fn configuration_files_are_read_or_refused_naming_the_file(text in config_text()) {
        if let Err(e) = config::parse(Path::new("/etc/xlb/xlb.toml"), &text) {
            let message = e.to_string();
            assert_sentence(&message)?;
            prop_assert!(message.contains("xlb.toml"), "the file is not named: {message}");
        }
    }

    /// Any line on the control socket: a request, or refused (the daemon answers "malformed
    /// request" with serde's sentence).
    #[test]
    fn control_socket_lines_are_requests_or_refused(line in control_line()) {
        if let Err(e) = serde_json::from_str::<Request>(&line) {
            assert_sentence(&e.to_string())?;
        }
    }

    /// Changes one after another, some refused by the rules, some by a full data path, some by a
    /// write the kernel refuses: a refused change leaves the desired state and every map as they
    /// were; an accepted one is what the runtime holds.
    #[test]
    fn a_refused_change_changes_nothing(
        steps in proptest::collection::vec((change_line(), 0usize..4), 1..12)
    ) {
        let mut rt = Runtime::new(
            FakeDataPath::new(Capacity { services: 3, reals: 5 }),
            None,
        );
        for (args, fail_at) in steps {
            let Ok(invocation) = parse(&args) else { continue };
            let Command::Change(change) = invocation.command else { continue };
            let before = rt.desired().clone();
            let maps_before = rt.dataplane().contents();
            if fail_at > 0 {
                rt.dataplane().fail_write(fail_at, 28 /* ENOSPC */);
            }
            let mut new = before.clone();
            let outcome = change
                .validate()
                .map_err(|e| e.to_string())
                .and_then(|()| new.apply(&change).map_err(|e| e.to_string()))
                .and_then(|()| rt.change_to(new).map_err(|e| error_chain(&e)));
            // A failure armed for a write that never came is disarmed for the next step.
            rt.dataplane().fail_write(usize::MAX / 2, 28);
            match outcome {
                Err(message) => {
                    assert_sentence(&message)?;
                    prop_assert_eq!(rt.desired(), &before, "a refused change ({}) changed the state", message);
                    // What packets meet, whatever the ids: a rollback may give a server back
                    // under another id (the one it had may have gone to a server the change added).
                    prop_assert_eq!(
                        rt.dataplane().contents().behaviour(),
                        maps_before.behaviour(),
                        "a refused change ({}) changed the maps",
                        message
                    );
                }
                Ok(()) => {
                    prop_assert_eq!(rt.desired().services.len(), rt.dataplane().contents().services.len());
                }
            }
        }
    }
}

/// Command lines that are mostly changes to a few services and servers.
fn change_line() -> impl Strategy<Value = Vec<String>> {
    let verb = proptest::sample::select(&["-A", "-E", "-D", "-a", "-e", "-d", "-C"][..]);
    let service = proptest::sample::select(
        &[
            "10.0.0.1:80",
            "10.0.0.2:80",
            "10.0.0.3:443",
            "10.0.0.4:80",
            "[fd00::1]:80",
        ][..],
    );
    let real = proptest::sample::select(
        &[
            "10.0.0.11",
            "10.0.0.12:80",
            "10.0.0.13",
            "10.0.0.14",
            "10.0.0.15",
            "10.0.0.16",
        ][..],
    );
    let extra = proptest::collection::vec(
        proptest::sample::select(
            &[
                "-w", "0", "1", "3", "-g", "-i", "-s", "mh", "rr", "-p", "300", "--check", "tcp",
            ][..],
        ),
        0..4,
    );
    (verb, service, real, extra).prop_map(|(verb, service, real, extra)| {
        let proto = if service.starts_with("10.0.0.4") {
            "-u"
        } else {
            "-t"
        };
        let mut line = vec![verb.to_owned()];
        if verb != "-C" {
            line.extend([proto.to_owned(), service.to_owned()]);
        }
        if matches!(verb, "-a" | "-e" | "-d") {
            line.extend(["-r".to_owned(), real.to_owned()]);
        }
        line.extend(extra.into_iter().map(str::to_owned));
        line
    })
}

/// TOML-like text: the keys of the configuration file with values of every kind, some
/// misspelled, some not TOML at all.
fn config_text() -> impl Strategy<Value = String> {
    let key = proptest::sample::select(
        &[
            "services",
            "address",
            "vip",
            "port",
            "protocol",
            "scheduler",
            "persistence",
            "reals",
            "weight",
            "forward",
            "check",
            "interval",
            "timeout",
            "rise",
            "fall",
            "kind",
            "path",
            "netmask",
            "typo",
            "[[services]]",
            "[[services.reals]]",
            "[services.check]",
            "[[services.real]]",
        ][..],
    );
    let value = proptest::sample::select(
        &[
            "\"10.0.0.1:80\"",
            "\"10.0.0.1\"",
            "80",
            "-1",
            "70000",
            "\"tcp\"",
            "\"udp\"",
            "\"mh\"",
            "\"rr\"",
            "\"dr\"",
            "\"tunnel\"",
            "\"1s\"",
            "\"0s\"",
            "3",
            "true",
            "[]",
            "{}",
            "\"\"",
            "\"fd00::1\"",
            "1.5",
            "\"[fd00::1]:80\"",
        ][..],
    );
    let line = prop_oneof![
        4 => (key.clone(), value).prop_map(|(k, v)| {
            if k.starts_with('[') { k.to_owned() } else { format!("{k} = {v}") }
        }),
        1 => key.prop_map(str::to_owned),
        1 => "\\PC{0,20}",
    ];
    proptest::collection::vec(line, 0..14).prop_map(|lines| lines.join("\n"))
}

/// JSON-like lines: requests, near-requests and garbage.
fn control_line() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                "\"state\"",
                "\"list\"",
                "\"reload\"",
                "{\"change\":{}}",
                "{\"restore\":{\"rules\":1}}",
                "{\"zero\":{\"service\":null}}",
                "{\"debug_events\":{\"on\":\"yes\"}}",
                "[]",
                "null",
                "{\"change\":{\"add_service\":{\"service\":\"x\"}}}",
                "{",
                "\"\u{0}\"",
            ][..],
        )
        .prop_map(str::to_owned),
        "\\PC{0,40}",
    ]
}
