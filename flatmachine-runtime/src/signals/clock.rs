//! The clock of deadlines and signal lifetimes: wall-clock milliseconds, measured through
//! tokio's clock.
//!
//! Deadlines must survive restarts, so they are wall-clock times (UTC milliseconds since the
//! Unix epoch). They are read through tokio's clock, anchored once per process to the system
//! clock: `now = system time at the anchor + (tokio::time::Instant::now() - tokio instant at
//! the anchor)`. Unpaused, that is the system time (as far as the monotonic and the system
//! clocks agree); in a test with tokio's clock paused (`#[tokio::test(start_paused = true)]`),
//! time moves as tokio advances it, so a dispatcher sleeping until a deadline reaches it at
//! once while every deadline check sees the time the deadline names.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn anchor() -> &'static (u64, tokio::time::Instant) {
    static ANCHOR: OnceLock<(u64, tokio::time::Instant)> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        (
            u64::try_from(wall).unwrap_or(u64::MAX),
            tokio::time::Instant::now(),
        )
    })
}

/// Now, in milliseconds since the Unix epoch (UTC), through tokio's clock (see the module
/// docs).
pub fn now_millis() -> u64 {
    let (wall, at) = *anchor();
    let now = tokio::time::Instant::now();
    if now >= at {
        wall.saturating_add(u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX))
    } else {
        wall.saturating_sub(u64::try_from(at.duration_since(now).as_millis()).unwrap_or(u64::MAX))
    }
}

/// `now_millis() + d`, saturating.
pub(crate) fn millis_after(d: Duration) -> u64 {
    now_millis().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the epoch as `isoformat()` text (`2026-11-24T19:15:37.123000+00:00`).
pub fn iso_from_millis(ms: u64) -> String {
    crate::persistence::encoded::IsoTimestamp::from_parts(ms / 1000, ((ms % 1000) * 1000) as u32)
        .as_str()
        .to_owned()
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.ffffff](+00:00|Z)` (what [`iso_from_millis`] and the
/// reference write) into milliseconds since the epoch; `None` for anything else.
pub fn millis_from_iso(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = text.get(r)?;
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut micros = 0u64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let padded = format!("{:0<6}", &frac[..digits.min(6)]);
        micros = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    if rest != "+00:00" && rest != "Z" {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(secs * 1000 + micros / 1000)
}

/// (year, month, day) → days since 1970-01-01 (H. Hinnant's algorithm), for years ≥ 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trips() {
        for ms in [0, 1_795_547_737_123, 951_782_400_001, 4_102_444_800_000] {
            assert_eq!(millis_from_iso(&iso_from_millis(ms)), Some(ms), "{ms}");
        }
        assert_eq!(
            millis_from_iso("2026-11-24T19:15:37.123456+00:00"),
            Some(1_795_547_737_123)
        );
        assert_eq!(
            millis_from_iso("2026-11-24T19:15:37Z"),
            Some(1_795_547_737_000)
        );
        for bad in [
            "",
            "2026-11-24",
            "2026-13-24T19:15:37Z",
            "2026-11-24T19:15:37+02:00",
            "x026-11-24T19:15:37Z",
        ] {
            assert_eq!(millis_from_iso(bad), None, "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time() {
        let before = now_millis();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let after = now_millis();
        assert!(after >= before + 3_600_000, "{before} → {after}");
    }
}
