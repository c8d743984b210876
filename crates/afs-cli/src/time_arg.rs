//! Parsing of times given on the command line and in imported files.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};

/// A point in time as given on the command line: absolute, or an age relative to the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeArg {
    /// An absolute time.
    At(DateTime<Utc>),
    /// The clock's current time minus this much.
    Ago(Duration),
}

impl TimeArg {
    /// The absolute time this argument stands for, given the current time `now`.
    pub(crate) fn resolve(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            TimeArg::At(at) => at,
            // An age beyond the representable range means "the beginning of time".
            TimeArg::Ago(age) => now
                .checked_sub_signed(age)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }
}

impl TimeArg {
    /// As [`resolve`](Self::resolve), with an age taken from the start of its minute: what
    /// the statistics of `afs stats` and `GET /v1/stats` use, so a window given as an age
    /// starts on a minute boundary, which the store reads from its rollups without scanning
    /// records. An absolute time is kept to the microsecond.
    pub(crate) fn resolve_to_minute(self, now: DateTime<Utc>) -> DateTime<Utc> {
        let at = self.resolve(now);
        match self {
            TimeArg::At(_) => at,
            TimeArg::Ago(_) => {
                use chrono::DurationRound;
                at.duration_trunc(Duration::minutes(1)).unwrap_or(at)
            }
        }
    }
}

/// Parses `--since`/`--until`: an absolute time (see [`parse_timestamp`]) or an age such as
/// `90s`, `30m`, `24h`, `7d`, `2w` (fractions like `1.5h` allowed).
pub(crate) fn parse_time_arg(text: &str) -> Result<TimeArg, String> {
    let text = text.trim();
    if let Some(age) = parse_age(text) {
        return age.map(TimeArg::Ago);
    }
    parse_timestamp(text).map(TimeArg::At).map_err(|_| {
        format!(
            "{text:?} is neither an RFC 3339 time (2025-01-02T03:04:05Z) nor an age \
             (30m, 24h, 7d)"
        )
    })
}

/// Parses an absolute time: RFC 3339 (`2025-01-02T03:04:05Z`, any offset, converted to
/// UTC), a naive ISO time as the Python module wrote it (`2025-01-02T03:04:05.123456`, also
/// with a space instead of `T`), read as UTC, or a bare date (`2025-01-02`, midnight UTC).
pub(crate) fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(naive.and_utc());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if let Some(midnight) = date.and_hms_opt(0, 0, 0) {
            return Ok(midnight.and_utc());
        }
    }
    Err(format!(
        "{text:?} is not an RFC 3339 time like 2025-01-02T03:04:05Z"
    ))
}

/// Parses `--older-than DAYS`: a positive, finite number of days.
pub(crate) fn parse_days(text: &str) -> Result<f64, String> {
    let days: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of days"))?;
    // About 2,700 years: far beyond any log, and far from chrono's range limits.
    if !days.is_finite() || days <= 0.0 || days > 1_000_000.0 {
        return Err(format!(
            "{text:?} must be a positive number of days (at most 1000000)"
        ));
    }
    Ok(days)
}

/// A duration of `days` days, to the millisecond.
pub(crate) fn days_to_duration(days: f64) -> Duration {
    Duration::milliseconds((days * 86_400_000.0).round() as i64)
}

/// `Some` when `text` looks like an age (a number followed by a unit letter), with the
/// result of parsing it; `None` when it is not an age at all (so it may be a timestamp).
fn parse_age(text: &str) -> Option<Result<Duration, String>> {
    let unit = text.chars().last()?;
    let millis_per_unit: f64 = match unit {
        's' => 1_000.0,
        'm' => 60_000.0,
        'h' => 3_600_000.0,
        'd' => 86_400_000.0,
        'w' => 604_800_000.0,
        _ => return None,
    };
    let number = &text[..text.len() - 1];
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    Some(match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n * millis_per_unit < i64::MAX as f64 / 2.0 => {
            Ok(Duration::milliseconds((n * millis_per_unit).round() as i64))
        }
        _ => Err(format!(
            "{text:?} is not a valid age (use e.g. 30m, 24h, 7d)"
        )),
    })
}

/// Parses a duration setting: a number of seconds (`3600`, `0.5`) or a number with a unit
/// (`90s`, `30m`, `1h`, `1.5h`, `7d`, `2w`). Must be > 0 and at most 100 years.
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let invalid = || format!("{text:?} is not a duration (seconds, or e.g. 90s, 30m, 1h, 7d)");
    let secs = match text.parse::<f64>() {
        Ok(secs) => secs,
        Err(_) => match parse_age(text) {
            Some(Ok(age)) => age.num_milliseconds() as f64 / 1000.0,
            Some(Err(_)) | None => return Err(invalid()),
        },
    };
    duration_from_secs(secs).map_err(|reason| format!("{text:?} {reason}"))
}

/// A duration of `secs` seconds, refused unless > 0, finite and at most 100 years.
pub(crate) fn duration_from_secs(secs: f64) -> Result<std::time::Duration, String> {
    const MAX_SECS: f64 = 100.0 * 365.0 * 86_400.0;
    if !secs.is_finite() || secs <= 0.0 {
        return Err("is not a duration > 0".into());
    }
    if secs > MAX_SECS {
        return Err("is longer than 100 years".into());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest whole unit:
/// `1h`, `30m`, `90s`, `7d`; fractions of a second as seconds (`0.5s`).
pub(crate) fn format_duration(duration: std::time::Duration) -> String {
    if duration.subsec_nanos() != 0 {
        return format!("{}s", duration.as_secs_f64());
    }
    let secs = duration.as_secs();
    for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size && secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn time_args() {
        let now = at(2025, 6, 1, 12, 0, 0);
        let check = |text: &str, expected: Option<DateTime<Utc>>| {
            let got = parse_time_arg(text).ok().map(|t| t.resolve(now));
            assert_eq!(got, expected, "{text}");
        };
        check("24h", Some(at(2025, 5, 31, 12, 0, 0)));
        check("7d", Some(at(2025, 5, 25, 12, 0, 0)));
        check("30m", Some(at(2025, 6, 1, 11, 30, 0)));
        check("90s", Some(at(2025, 6, 1, 11, 58, 30)));
        check("2w", Some(at(2025, 5, 18, 12, 0, 0)));
        check("1.5h", Some(at(2025, 6, 1, 10, 30, 0)));
        check("0d", Some(now));
        check("2025-01-02T03:04:05Z", Some(at(2025, 1, 2, 3, 4, 5)));
        check("2025-01-02T05:04:05+02:00", Some(at(2025, 1, 2, 3, 4, 5)));
        check("2025-01-02T03:04:05", Some(at(2025, 1, 2, 3, 4, 5)));
        check("2025-01-02", Some(at(2025, 1, 2, 0, 0, 0)));
        check("yesterday", None);
        check("h", None);
        check("-5d", None);
        check("5y", None);
        check("1e400d", None);
        check("", None);
    }

    #[test]
    fn naive_iso_with_microseconds_is_utc() {
        let t = parse_timestamp("2025-01-02T03:04:05.123456").unwrap();
        assert_eq!(t, at(2025, 1, 2, 3, 4, 5) + Duration::microseconds(123_456));
        let t = parse_timestamp("2025-01-02 03:04:05.5").unwrap();
        assert_eq!(t, at(2025, 1, 2, 3, 4, 5) + Duration::milliseconds(500));
        assert!(parse_timestamp("2025-13-02T03:04:05").is_err());
        assert!(parse_timestamp("not a time").is_err());
    }

    #[test]
    fn days() {
        assert_eq!(parse_days("30"), Ok(30.0));
        assert_eq!(parse_days("0.5"), Ok(0.5));
        assert!(parse_days("0").is_err());
        assert!(parse_days("-1").is_err());
        assert!(parse_days("NaN").is_err());
        assert!(parse_days("inf").is_err());
        assert!(parse_days("ten").is_err());
        assert_eq!(days_to_duration(0.5), Duration::hours(12));
    }

    #[test]
    fn durations_read_and_write() {
        let check = |text: &str, secs: f64, shown: &str| {
            let d = parse_duration(text).unwrap();
            assert_eq!(d.as_secs_f64(), secs, "{text}");
            assert_eq!(format_duration(d), shown, "{text}");
            assert_eq!(parse_duration(shown), Ok(d), "{shown}");
        };
        check("3600", 3600.0, "1h");
        check("30m", 1800.0, "30m");
        check("1.5h", 5400.0, "90m");
        check("90s", 90.0, "90s");
        check("7d", 604_800.0, "1w");
        check("0.5", 0.5, "0.5s");
        for bad in [
            "0",
            "0s",
            "-5",
            "soon",
            "",
            "1y",
            "2025-01-01T00:00:00Z",
            "inf",
            "NaN",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
