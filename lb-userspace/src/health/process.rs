//! Running a check's or a notify hook's command, as a program and its arguments or by `sh -c`
//! when the operator asked for a shell: in its own process group, so that a timeout kills the
//! command and everything it started, not only the shell.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _},
    process::Command,
};

/// How much of a command's standard error is kept for the failure reason.
const STDERR_CAP: u64 = 4096;

/// How long after the command exits its standard error may still be read.
const STDERR_GRACE: Duration = Duration::from_millis(100);

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It exited with this code.
    Exited {
        /// The exit code.
        code: i32,
        /// The last line of its standard error, if it wrote one.
        stderr: Option<String>,
    },
    /// A signal ended it.
    Signalled,
    /// It ran past its time and was killed with its process group.
    TimedOut,
}

/// Runs `sh -c script` with the extra `args` (`$0` is `name`, then `$1`...) and `env`, without
/// standard input or output, and waits for it at most `timeout`.
pub(crate) async fn run_shell(
    name: &str,
    script: &str,
    args: &[String],
    env: &[(&str, String)],
    timeout: Duration,
) -> std::io::Result<Outcome> {
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).arg(name).args(args);
    run(command, env, timeout).await
}

/// Runs the program that the command line `line` names, without a shell, with its words and then
/// `args` as its arguments; otherwise as [`run_shell`].
pub(crate) async fn run_program(
    line: &str,
    args: &[String],
    env: &[(&str, String)],
    timeout: Duration,
) -> std::io::Result<Outcome> {
    let words = crate::state::command::words(line)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut command = Command::new(&words[0]);
    command.args(&words[1..]).args(args);
    run(command, env, timeout).await
}

async fn run(
    mut command: Command,
    env: &[(&str, String)],
    timeout: Duration,
) -> std::io::Result<Outcome> {
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    // Kills the group if this future is dropped (a timeout, or the check's task being stopped)
    // before the command is reaped; declared after `child` so that it runs before the child's drop
    // reaps it, while its pid cannot have been reused.
    let mut group = GroupKiller(child.id());
    // Read apart from the wait: a background child may hold the pipe open after the shell exits.
    let mut stderr = tokio::spawn(last_line(child.stderr.take()));
    let Ok(status) = tokio::time::timeout(timeout, child.wait()).await else {
        stderr.abort();
        group.kill();
        // The shell is gone or going; reaping it is the drop's business if this stalls.
        let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
        return Ok(Outcome::TimedOut);
    };
    let status = status?;
    group.0 = None;
    let stderr = match tokio::time::timeout(STDERR_GRACE, &mut stderr).await {
        Ok(Ok(line)) => line,
        _ => {
            stderr.abort();
            None
        }
    };
    Ok(match status.code() {
        Some(code) => Outcome::Exited { code, stderr },
        None => Outcome::Signalled,
    })
}

/// The last non-empty line of what a stream says, reading at most [`STDERR_CAP`] bytes of it and
/// draining the rest, so that a chatty command never blocks on a full pipe.
async fn last_line(stream: Option<impl AsyncRead + Unpin>) -> Option<String> {
    let mut stream = stream?;
    let mut kept = Vec::new();
    let _ = (&mut stream).take(STDERR_CAP).read_to_end(&mut kept).await;
    let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&kept)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_owned)
}

/// The process group of a running command, killed on drop unless cleared.
struct GroupKiller(Option<u32>);

impl GroupKiller {
    fn kill(&mut self) {
        let Some(pid) = self.0.take().and_then(|p| i32::try_from(p).ok()) else {
            return;
        };
        // The process group that the child leads (process_group(0)); the child is not reaped
        // yet, so the id is still its own. Already gone: nothing to do.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_commands_exit_code_and_last_error_line_are_reported() {
        let outcome = run_shell(
            "test",
            "echo first >&2; echo \"$1 $XLB_X\" >&2; exit 3",
            &["arg".to_owned()],
            &[("XLB_X", "env".to_owned())],
            Duration::from_secs(5),
        )
        .await
        .expect("spawn sh");
        assert_eq!(
            outcome,
            Outcome::Exited {
                code: 3,
                stderr: Some("arg env".to_owned())
            }
        );
    }

    #[tokio::test]
    async fn a_program_runs_without_a_shell_with_its_words_and_arguments() {
        // The quoted script is one word, handed to the program as it is.
        let outcome = run_program(
            "sh -c 'echo \"$0 $1\" >&2; exit 4' first",
            &["second".to_owned()],
            &[],
            Duration::from_secs(5),
        )
        .await
        .expect("spawn");
        assert_eq!(
            outcome,
            Outcome::Exited {
                code: 4,
                stderr: Some("first second".to_owned())
            }
        );
        let missing = run_program("/nonexistent/probe --x", &[], &[], Duration::from_secs(5))
            .await
            .expect_err("no such program");
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        let refused = run_program("probe | grep x", &[], &[], Duration::from_secs(5))
            .await
            .expect_err("needs a shell");
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_children() {
        let marker = std::env::temp_dir().join(format!("xlb-health-{}", std::process::id()));
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let started = std::time::Instant::now();
        let outcome = run_shell("test", &script, &[], &[], Duration::from_millis(200))
            .await
            .expect("spawn sh");
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !marker.exists(),
            "the background child should have been killed with the group"
        );
    }
}
