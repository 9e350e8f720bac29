//! UTC timestamps as fixed-width ISO 8601 text (`2024-05-01T12:00:00.000000+00:00`).
//!
//! The reference stores Python `datetime.isoformat()` strings; a fixed width (microseconds always
//! present) keeps text comparison equal to time comparison, which stale-worker queries rely on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, as fixed-width ISO 8601 UTC text.
pub fn now_iso() -> String {
    iso_at(SystemTime::now())
}

/// `seconds` before now, as fixed-width ISO 8601 UTC text (negative or non-finite values count
/// as zero).
pub(crate) fn iso_seconds_ago(seconds: f64) -> String {
    let seconds = if seconds.is_finite() && seconds > 0.0 {
        seconds.min(1e12)
    } else {
        0.0
    };
    let at = SystemTime::now()
        .checked_sub(Duration::from_secs_f64(seconds))
        .unwrap_or(UNIX_EPOCH);
    iso_at(at)
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `ms` milliseconds after the Unix epoch, as fixed-width ISO 8601 UTC text.
pub(crate) fn iso_ms(ms: u64) -> String {
    iso_at(UNIX_EPOCH + Duration::from_millis(ms.min(1 << 50)))
}

/// Parses the fixed-width text [`now_iso`] writes back to milliseconds since the epoch
/// (`None` for any other shape).
pub(crate) fn parse_iso_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let micros = match text.get(19..20) {
        Some(".") => {
            let frac: String = text[20..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let digits = frac.len().min(6);
            frac.get(..digits)?.parse::<i64>().unwrap_or(0) * 10_i64.pow((6 - digits) as u32)
        }
        _ => 0,
    };
    let days = days_from_civil(y, m, d);
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1000 + micros / 1000).ok()
}

/// (year, month, day) → days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `at` as fixed-width ISO 8601 UTC text.
pub(crate) fn iso_at(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let micros = since.subsec_micros();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso_at(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
        let t = UNIX_EPOCH + Duration::from_micros(1_709_251_199_123_456);
        assert_eq!(iso_at(t), "2024-02-29T23:59:59.123456+00:00");
        assert!(iso_seconds_ago(10.0) < now_iso());
        assert_eq!(iso_seconds_ago(f64::NAN).len(), now_iso().len());
        assert_eq!(
            iso_ms(1_709_251_199_123),
            "2024-02-29T23:59:59.123000+00:00"
        );
        assert_eq!(
            parse_iso_ms("2024-02-29T23:59:59.123456+00:00"),
            Some(1_709_251_199_123)
        );
        assert_eq!(parse_iso_ms("1970-01-01T00:00:00+00:00"), Some(0));
        assert_eq!(parse_iso_ms("yesterday"), None);
        let now = now_ms();
        assert!(parse_iso_ms(&now_iso()).is_some_and(|t| t.abs_diff(now) < 5_000));
    }
}
