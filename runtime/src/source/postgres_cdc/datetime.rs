//! Dates and timestamps in PostgreSQL's ISO output, read without a format string.
//!
//! chrono's `parse_from_str` interprets its format string on every call, and the copy
//! reads millions of values; a profile of the copy put a tenth of its reader's time there.
//! These read the one form PostgreSQL prints with `DateStyle = ISO` (`2024-05-01`,
//! `2024-05-01 12:30:00.25`, then `+00`, `+05:30` or `-03:30:15` for `timestamptz`) and
//! return `None` for anything else (years past 9999, BC, infinity), which the caller then
//! reads the slow way. The tests hold them to chrono's results.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};

fn digits(bytes: &[u8]) -> Option<u32> {
    let mut value = 0u32;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    Some(value)
}

/// `YYYY-MM-DD`.
pub fn date(text: &str) -> Option<NaiveDate> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = digits(&b[0..4])?;
    NaiveDate::from_ymd_opt(year as i32, digits(&b[5..7])?, digits(&b[8..10])?)
}

/// `YYYY-MM-DD HH:MM:SS[.f]`, and the text after it.
pub fn date_time(text: &str) -> Option<(NaiveDateTime, &str)> {
    let b = text.as_bytes();
    if b.len() < 19 || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let day = date(&text[..10])?;
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let mut end = 19;
    let mut nanos = 0;
    if b.get(19) == Some(&b'.') {
        end = 20;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let fraction = &b[20..end];
        if fraction.is_empty() || fraction.len() > 9 {
            return None;
        }
        nanos = digits(fraction)? * 10u32.pow(9 - fraction.len() as u32);
    }
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    Some((day.and_time(time), &text[end..]))
}

/// `+HH`, `-HH:MM` or `+HH:MM:SS`: seconds east of UTC.
pub fn offset(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut seconds = 0i64;
    let mut parts = text[1..].split(':');
    for unit in [3600, 60, 1] {
        match parts.next() {
            Some(part) if part.len() == 2 => seconds += i64::from(digits(part.as_bytes())?) * unit,
            Some(_) => return None,
            None => break,
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Some(sign * seconds)
}

/// A `timestamptz` in UTC.
pub fn zoned(text: &str) -> Option<NaiveDateTime> {
    let (local, rest) = date_time(text)?;
    local.checked_sub_signed(TimeDelta::seconds(offset(rest)?))
}

/// `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z`, as chrono's
/// `%Y-%m-%dT%H:%M:%S%.fZ` writes it, for years 0 to 9999; false (nothing written) for
/// other years.
pub fn write_utc(out: &mut String, at: NaiveDateTime) -> bool {
    if !(0..=9999).contains(&at.year()) {
        return false;
    }
    crate::decode::temporal::write_date_time(out, at);
    out.push('Z');
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    #[test]
    fn dates_and_timestamps_read_as_chrono_reads_them() {
        for text in [
            "1970-01-01",
            "2024-02-29",
            "0001-01-01",
            "9999-12-31",
            "2023-02-29",
            "2024-13-01",
            "24-01-01",
            "2024-01-1x",
        ] {
            // PostgreSQL writes four-digit years; chrono also reads `24-01-01`.
            let slow = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok();
            let fast = date(text);
            assert!(fast.is_none() || fast == slow, "{text}");
            assert_eq!(fast.is_some(), slow.is_some() && text.len() == 10, "{text}");
        }
        for text in [
            "1970-01-01 00:00:00",
            "2024-05-01 12:30:00.25",
            "2024-05-01 23:59:59.999999",
            "2024-05-01 23:59:60",
            "2024-05-01 24:00:00",
            "2024-05-01 12:30:00.",
            "2024-05-01 12:3:00",
        ] {
            let fast = date_time(text)
                .filter(|(_, rest)| rest.is_empty())
                .map(|(at, _)| at);
            let slow = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok();
            // What is not read here is read the slow way; what is, must agree.
            assert!(
                fast.is_none() || fast == slow,
                "{text}: {fast:?} against {slow:?}"
            );
            // Leap seconds and unpadded fields are not PostgreSQL's output.
            let canonical = !text.contains(":60") && !text.contains(":3:");
            assert_eq!(fast.is_some(), slow.is_some() && canonical, "{text}");
        }
    }

    #[test]
    fn zoned_timestamps_convert_and_write_as_chrono_does() {
        let mut cases = vec![
            "2024-05-01 12:30:00+00".to_string(),
            "2024-05-01 00:30:00.5+05:30".into(),
            "2024-12-31 23:59:59.123456-08".into(),
            "0001-01-01 00:00:00+01".into(),
            "9999-12-31 23:00:00-03:30".into(),
            "2024-05-01 12:30:00.000001+00".into(),
            "2024-05-01 12:30:00+5".into(),
            "2024-05-01 12:30:00".into(),
            "infinity".into(),
        ];
        for (i, fraction) in ["", ".1", ".12", ".123", ".1234", ".12345", ".123456"]
            .iter()
            .enumerate()
        {
            cases.push(format!(
                "2000-0{}-1{i} 0{i}:4{i}:0{i}{fraction}-0{i}",
                i + 1
            ));
        }
        for text in &cases {
            let slow = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
                .ok()
                .map(|at| at.to_utc());
            let fast = zoned(text);
            assert!(
                fast.is_none() || fast == slow.map(|at| at.naive_utc()),
                "{text}"
            );
            assert_eq!(fast.is_some(), slow.is_some(), "{text}");
            if let Some(at) = slow {
                let mut written = String::new();
                if write_utc(&mut written, at.naive_utc()) {
                    assert_eq!(
                        written,
                        at.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string(),
                        "{text}"
                    );
                }
            }
        }
        // Offsets in seconds (local mean time, before 1900), which chrono cannot read.
        assert_eq!(
            zoned("1890-01-01 00:00:00-00:09:21").map(|at| at.to_string()),
            Some("1890-01-01 00:09:21".into())
        );
    }
}
