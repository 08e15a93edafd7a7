//! The command lines an operator gives xlbd to run (`--check-command`, `--check-notify`): run as
//! a program and its arguments, without a shell, unless the operator asks for `sh -c`
//! (`--check-shell`, `--check-notify-shell`).
//!
//! Quoting (`'…'`, `"…"`, `\`) splits the words as the shell would (shlex). What only a shell
//! gives a meaning to (pipes, redirections, expansions, patterns, lists) is refused without the
//! shell rather than passed to the program as literal words. No crate tells whether a command
//! line uses such constructs (shlex and shell-words only split), hence [`shell_construct`].

/// The first construct of `command` that only a shell gives a meaning to, outside quotes, named
/// for an error message; `None` when the words are all there is to it.
pub fn shell_construct(command: &str) -> Option<&'static str> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut quote = Quote::None;
    let mut word_start = true;
    let mut first_word = true;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match quote {
            Quote::Single => {
                if c == '\'' {
                    quote = Quote::None;
                }
                continue;
            }
            Quote::Double => {
                match c {
                    '"' => quote = Quote::None,
                    '\\' => {
                        chars.next();
                    }
                    '$' => return Some("an expansion ($)"),
                    '`' => return Some("a command substitution (`)"),
                    _ => {}
                }
                continue;
            }
            Quote::None => {}
        }
        let at_word_start = word_start;
        word_start = false;
        match c {
            ' ' | '\t' => {
                if !at_word_start {
                    first_word = false;
                }
                word_start = true;
            }
            '\'' => quote = Quote::Single,
            '"' => quote = Quote::Double,
            '\\' if chars.next() == Some('\n') => return Some("a line continuation"),
            '\n' | '\r' => return Some("a second line"),
            '|' => return Some("a pipe (|)"),
            '&' => return Some("a background job or list (&)"),
            ';' => return Some("a list (;)"),
            '<' | '>' => return Some("a redirection (< or >)"),
            '(' | ')' => return Some("a subshell (parentheses)"),
            '$' => return Some("an expansion ($)"),
            '`' => return Some("a command substitution (`)"),
            '*' | '?' | '[' => return Some("a file name pattern (*, ? or [)"),
            '#' if at_word_start => return Some("a comment (#)"),
            '~' if at_word_start => return Some("a home directory (~)"),
            '=' if first_word => return Some("a variable assignment (NAME=VALUE)"),
            _ => {}
        }
    }
    None
}

/// Why a command line cannot be run without a shell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WordsError {
    /// It uses a construct only a shell understands.
    #[error("uses {0}, which only a shell understands")]
    NeedsShell(&'static str),
    /// A quote is not closed.
    #[error("has a quote that is not closed")]
    Unbalanced,
    /// Nothing to run.
    #[error("is empty")]
    Empty,
}

/// The program and its arguments that `command` names, split as the shell would split them.
pub fn words(command: &str) -> Result<Vec<String>, WordsError> {
    if let Some(construct) = shell_construct(command) {
        return Err(WordsError::NeedsShell(construct));
    }
    let words = shlex::split(command).ok_or(WordsError::Unbalanced)?;
    if words.is_empty() {
        return Err(WordsError::Empty);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_quoted_words_need_no_shell() {
        assert_eq!(
            words("/usr/lib/nagios/check_http -H 10.0.0.1 -u '/a b' \"x y\" c\\ d"),
            Ok(vec![
                "/usr/lib/nagios/check_http".to_owned(),
                "-H".to_owned(),
                "10.0.0.1".to_owned(),
                "-u".to_owned(),
                "/a b".to_owned(),
                "x y".to_owned(),
                "c d".to_owned(),
            ])
        );
        assert_eq!(
            words("test -f '/srv/a|b;c$d'"),
            Ok(vec![
                "test".to_owned(),
                "-f".to_owned(),
                "/srv/a|b;c$d".to_owned()
            ])
        );
        // Inside a word, '#', '~' and '=' are literal.
        assert_eq!(
            words("probe --deep=1 a#b ~x"),
            Err(WordsError::NeedsShell("a home directory (~)"))
        );
        assert_eq!(
            words("probe --deep=1 a#b x~"),
            Ok(vec![
                "probe".to_owned(),
                "--deep=1".to_owned(),
                "a#b".to_owned(),
                "x~".to_owned()
            ])
        );
    }

    #[test]
    fn shell_constructs_are_named() {
        let cases = [
            ("curl -sf http://x/ | grep ok", "a pipe (|)"),
            ("a && b", "a background job or list (&)"),
            ("a; b", "a list (;)"),
            ("probe > /dev/null", "a redirection (< or >)"),
            ("probe $HOST", "an expansion ($)"),
            ("probe \"$HOST\"", "an expansion ($)"),
            ("probe `hostname`", "a command substitution (`)"),
            ("ls /tmp/*.pid", "a file name pattern (*, ? or [)"),
            ("probe # comment", "a comment (#)"),
            ("FOO=1 probe", "a variable assignment (NAME=VALUE)"),
            ("(probe)", "a subshell (parentheses)"),
            ("a\nb", "a second line"),
        ];
        for (command, construct) in cases {
            assert_eq!(shell_construct(command), Some(construct), "{command}");
        }
    }

    #[test]
    fn unclosed_quotes_and_empty_commands_are_refused() {
        assert_eq!(words("probe 'x"), Err(WordsError::Unbalanced));
        assert_eq!(words("probe \"x"), Err(WordsError::Unbalanced));
        assert_eq!(words("   "), Err(WordsError::Empty));
    }
}
