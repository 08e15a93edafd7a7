//! Errors as an operator reads them.

/// An error with every source after it, `: `-separated, as an operator reads it: "the data path
/// refused the change: adding ...: adding a real server failed: `bpf_map_update_elem` failed:
/// Argument list too long (os error 7)".
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        // An error that already shows its source in its own text is not repeated.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
