//! The one duration grammar of every Duet command line and config file.
//!
//! `500ms`, `30s`, `1.5s`, `10m`, `2h`, `1d`, or a bare number of seconds. Owns the syntax
//! only: ranges ("a TTL of at least one second", "a run of at most a week") are the
//! caller's, checked where the value is used.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration (e.g. 500ms, 30s, 10m, 2h, 1d)")]
    NotANumber(String),
    #[error("{input:?}: unknown unit {unit:?} (use ms, s, m, h or d)")]
    UnknownUnit { input: String, unit: String },
    #[error("{0:?} is too long")]
    TooLong(String),
}

/// Parses a duration (see the module docs). Fractions are allowed (`1.5s`, `0.5m`);
/// negative, NaN and overflowing values are refused.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(DurationError::NotANumber(s.to_owned()));
    }
    let scale_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(DurationError::UnknownUnit {
                input: s.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    // Whole numbers stay exact (no float rounding of `86400s`); fractions go through f64.
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(scale_ms)
            .map(Duration::from_millis)
            .ok_or_else(|| DurationError::TooLong(s.to_owned()));
    }
    let v: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_owned()))?;
    let secs = v * scale_ms as f64 / 1000.0;
    Duration::try_from_secs_f64(secs).map_err(|_| DurationError::TooLong(s.to_owned()))
}

/// Writes `d` in the grammar above, in the largest unit that keeps it exact
/// (`90s` → `90s`, `600s` → `10m`, `1500ms` → `1500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, scale) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms % scale == 0 {
            return format!("{}{unit}", ms / scale);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_the_rest() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 10m "), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(matches!(
            parse_duration("10x"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("abc"),
            Err(DurationError::NotANumber(_))
        ));
        assert!(matches!(
            parse_duration(""),
            Err(DurationError::NotANumber(_))
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::NotANumber(_))
        ));
        assert!(matches!(
            parse_duration("1.2.3s"),
            Err(DurationError::NotANumber(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::NotANumber(_) | DurationError::TooLong(_))
        ));
        assert!(matches!(
            parse_duration("18446744073709551615d"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn formats_back_into_the_grammar() {
        for s in ["90s", "10m", "2h", "1d", "1500ms", "0s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
