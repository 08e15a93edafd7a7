//! Values of the test tools' command lines (`xlb-fuzz`, `xlb-soak`), for clap's `value_parser`:
//! each gives a sentence naming what it expected.

/// A count of frames: digits, `_` allowed between them (`1_000_000`).
pub fn count(value: &str) -> Result<u64, String> {
    value
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{value}` is not a count (digits, `_` may group them)"))
}

/// A seed: decimal, or hexadecimal after `0x`.
pub fn seed(value: &str) -> Result<u64, String> {
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    }
    .map_err(|_| format!("`{value}` is not a seed (a decimal number, or hexadecimal after 0x)"))
}

/// A duration in minutes: a positive number, fractions allowed.
pub fn minutes(value: &str) -> Result<f64, String> {
    value
        .parse()
        .ok()
        .filter(|m: &f64| m.is_finite() && *m > 0.0)
        .ok_or_else(|| format!("`{value}` is not a positive number of minutes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_seeds_and_minutes_parse_as_the_tools_document_them() {
        assert_eq!(count("1_000_000"), Ok(1_000_000));
        assert!(count("many").unwrap_err().contains("not a count"));
        assert_eq!(seed("0x786c6221"), Ok(0x786c_6221));
        assert_eq!(seed("42"), Ok(42));
        assert!(seed("0xzz").unwrap_err().contains("not a seed"));
        assert_eq!(minutes("0.5"), Ok(0.5));
        for bad in ["0", "-1", "inf", "NaN", "soon"] {
            assert!(minutes(bad).is_err(), "{bad}");
        }
    }
}
