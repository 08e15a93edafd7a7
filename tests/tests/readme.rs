//! The README's commands as a reader pastes them: they work for root as written (no `sudo`, which
//! a container may not have), and its test command is the one CI and the hooks run.

const README: &str = include_str!("../../README.md");

/// Every command in the README's code: the lines of its fenced blocks and its inline code spans.
fn commands() -> Vec<&'static str> {
    let mut commands = Vec::new();
    let mut in_block = false;
    for line in README.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            commands.push(line.trim());
        } else {
            commands.extend(line.split('`').skip(1).step_by(2));
        }
    }
    commands
}

#[test]
fn the_readmes_commands_work_for_root_without_sudo() {
    let with_sudo: Vec<&str> = commands()
        .into_iter()
        // The one place that tells another user to prefix `sudo -E`.
        .filter(|command| command.starts_with("sudo") && *command != "sudo -E")
        .collect();
    assert!(
        with_sudo.is_empty(),
        "commands that fail where there is no sudo: {with_sudo:?}"
    );
    assert!(
        README.contains("prefix each with `sudo -E`"),
        "the README no longer tells a user who is not root what to do"
    );
}

#[test]
fn the_readme_opens_with_the_demo_and_the_test_command() {
    let first: Vec<&str> = commands().into_iter().take(2).collect();
    assert_eq!(first, ["cargo xtask demo    # run xlb: a lab of namespaces on this machine, balancing real traffic", "cargo xtask test    # run every test"]);
    assert!(
        README
            .lines()
            .any(|line| line.starts_with("cargo xtask test")),
        "CI and the hooks look for the line `cargo xtask test`"
    );
}
