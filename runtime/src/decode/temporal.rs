//! ISO-8601 dates, times and timestamps as Debezium writes them (`ZonedTimestamp`,
//! `ZonedTime`, and strings in schemaless streams), to and from Arrow's integer encodings.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

pub const NANOS_PER_DAY: i64 = 86_400_000_000_000;

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")
}

/// `2020-07-17` to days since 1970-01-01.
pub fn parse_date(s: &str) -> Option<i32> {
    let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    i32::try_from((date - epoch()).num_days()).ok()
}

/// A timestamp with an offset (`Z`, `+02:00`) to nanoseconds since the epoch in UTC. Without
/// an offset, the value is read as UTC when `assume_utc`, else rejected.
pub fn parse_timestamp_nanos(s: &str, assume_utc: bool) -> Option<i128> {
    if let Some(nanos) = parse_canonical(s.as_bytes()) {
        return Some(nanos);
    }
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp() as i128 * 1_000_000_000 + dt.timestamp_subsec_nanos() as i128);
    }
    // Debezium and databases also write a space instead of `T`, and offsets without colons.
    for format in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(s, format) {
            return Some(
                dt.timestamp() as i128 * 1_000_000_000 + dt.timestamp_subsec_nanos() as i128,
            );
        }
    }
    if assume_utc {
        for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(dt) = NaiveDateTime::parse_from_str(s, format) {
                let utc = dt.and_utc();
                return Some(
                    utc.timestamp() as i128 * 1_000_000_000 + utc.timestamp_subsec_nanos() as i128,
                );
            }
        }
    }
    None
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(b: &[u8]) -> Option<i64> {
    let mut v = 0i64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as i64;
    }
    Some(v)
}

/// The form Debezium writes (`2020-07-17T18:00:22.123456Z`, or with `+02:00`), without a
/// general parser. `None` for anything else, which the general path then reads.
fn parse_canonical(b: &[u8]) -> Option<i128> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let fraction = &b[start..i];
        if fraction.is_empty() || fraction.len() > 9 {
            return None;
        }
        nanos = digits(fraction)? * 10i64.pow(9 - fraction.len() as u32);
    }
    let offset_seconds = match &b[i..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits(&[*h1, *h2])?;
            let minutes = digits(&[*m1, *m2])?;
            let magnitude = hours * 3600 + minutes * 60;
            if *sign == b'-' { -magnitude } else { magnitude }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_seconds;
    Some(seconds as i128 * 1_000_000_000 + nanos as i128)
}

/// `18:00:22.123456Z` or `10:15:30+01:00` to nanoseconds since midnight UTC (a `ZonedTime`);
/// `18:00:22` without an offset is read as is.
pub fn parse_time_nanos(s: &str) -> Option<i64> {
    let s = s.trim();
    let (clock, offset_seconds) = split_offset(s)?;
    let time = NaiveTime::parse_from_str(clock, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(clock, "%H:%M"))
        .ok()?;
    let nanos = time.num_seconds_from_midnight() as i64 * 1_000_000_000 + time.nanosecond() as i64;
    Some((nanos - offset_seconds * 1_000_000_000).rem_euclid(NANOS_PER_DAY))
}

fn split_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(clock) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return Some((clock, 0));
    }
    // An offset starts at the last '+' or '-' (times have no other sign).
    match s.rfind(['+', '-']) {
        Some(i) => {
            let (clock, offset) = s.split_at(i);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let digits: String = offset[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 && digits.len() != 2 {
                return None;
            }
            let hours: i64 = digits[..2].parse().ok()?;
            let minutes: i64 = if digits.len() == 4 {
                digits[2..].parse().ok()?
            } else {
                0
            };
            Some((clock, sign * (hours * 3600 + minutes * 60)))
        }
        None => Some((s, 0)),
    }
}

pub fn format_date(days: i32) -> String {
    match epoch().checked_add_signed(chrono::TimeDelta::days(days as i64)) {
        Some(d) => {
            let mut out = String::with_capacity(10);
            write_date(&mut out, d);
            out
        }
        None => days.to_string(),
    }
}

/// `%Y-%m-%d` as chrono writes it, without interpreting a format string for the years
/// PostgreSQL and most targets hold (0 to 9999): the sink formats a value per cell.
fn write_date(out: &mut String, d: NaiveDate) {
    use chrono::Datelike;
    use std::fmt::Write as _;
    if (0..=9999).contains(&d.year()) {
        push_padded(out, d.year() as u32, 4);
        out.push('-');
        push_padded(out, d.month(), 2);
        out.push('-');
        push_padded(out, d.day(), 2);
    } else {
        let _ = write!(out, "{}", d.format("%Y-%m-%d"));
    }
}

/// Formats nanoseconds since the epoch as ISO-8601; with a `Z` when the value is UTC.
pub fn format_timestamp_nanos(nanos: i128, utc: bool) -> String {
    let secs = nanos.div_euclid(1_000_000_000) as i64;
    let sub = nanos.rem_euclid(1_000_000_000) as u32;
    match DateTime::from_timestamp(secs, sub) {
        Some(dt) => {
            let mut out = String::with_capacity(32);
            write_date_time(&mut out, dt.naive_utc());
            if utc {
                out.push('Z');
            }
            out
        }
        None => nanos.to_string(),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]`, as chrono's `%Y-%m-%dT%H:%M:%S%.f`
/// writes it.
pub(crate) fn write_date_time(out: &mut String, at: NaiveDateTime) {
    write_date(out, at.date());
    for (separator, value) in [('T', at.hour()), (':', at.minute()), (':', at.second())] {
        out.push(separator);
        push_padded(out, value, 2);
    }
    push_fraction(out, at.nanosecond());
}

pub fn format_time_nanos(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let sub = nanos.rem_euclid(1_000_000_000) as u32;
    let mut out = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    push_fraction(&mut out, sub);
    out
}

/// Appends `.ffffff` with trailing zeros removed in groups of three (milli/micro/nano).
pub(crate) fn push_fraction(out: &mut String, nanos: u32) {
    if nanos == 0 {
        return;
    }
    out.push('.');
    if nanos.is_multiple_of(1_000_000) {
        push_padded(out, nanos / 1_000_000, 3);
    } else if nanos.is_multiple_of(1_000) {
        push_padded(out, nanos / 1_000, 6);
    } else {
        push_padded(out, nanos, 9);
    }
}

/// Appends `value`'s last `width` digits (at most 10), zero-padded: the sink and the
/// source format a date or time per value, and the formatter showed in their profiles.
fn push_padded(out: &mut String, mut value: u32, width: usize) {
    let mut digits = [b'0'; 10];
    for digit in digits[..width].iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.push_str(std::str::from_utf8(&digits[..width]).expect("ASCII digits"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2020-07-17"), Some(18460));
        assert_eq!(parse_date("0001-01-01"), Some(-719162));
        assert_eq!(parse_date("2020-13-01"), None);
        assert_eq!(format_date(18460), "2020-07-17");
        assert_eq!(format_date(-719162), "0001-01-01");
    }

    #[test]
    fn timestamps() {
        let t = parse_timestamp_nanos("2020-07-17T18:00:22Z", false).unwrap();
        assert_eq!(t, 1_595_008_822_000_000_000);
        let t2 = parse_timestamp_nanos("2020-07-17T20:00:22.123456+02:00", false).unwrap();
        assert_eq!(t2, 1_595_008_822_123_456_000);
        assert_eq!(parse_timestamp_nanos("2020-07-17 18:00:22", false), None);
        assert_eq!(
            parse_timestamp_nanos("2020-07-17 18:00:22", true),
            Some(1_595_008_822_000_000_000)
        );
        assert_eq!(
            format_timestamp_nanos(t2, true),
            "2020-07-17T18:00:22.123456Z"
        );
        assert_eq!(format_timestamp_nanos(t, false), "2020-07-17T18:00:22");
        let far = parse_timestamp_nanos("9999-12-31T23:59:59Z", false).unwrap();
        assert_eq!(format_timestamp_nanos(far, true), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn dates_and_timestamps_format_as_chrono_formats_them() {
        for days in [
            -719_528 - 400,
            -719_528,
            -1,
            0,
            1,
            19_000,
            2_932_896,
            2_932_897,
        ] {
            let chrono = epoch()
                .checked_add_signed(chrono::TimeDelta::days(days as i64))
                .unwrap();
            assert_eq!(format_date(days), chrono.format("%Y-%m-%d").to_string());
            for nanos_of_day in [0_i64, 1, 45_296_000_000_123] {
                let nanos = days as i128 * 86_400_000_000_000 + nanos_of_day as i128;
                let at = chrono.and_hms_opt(0, 0, 0).unwrap()
                    + chrono::TimeDelta::nanoseconds(nanos_of_day);
                let mut expected = at.format("%Y-%m-%dT%H:%M:%S%.f").to_string();
                expected.push('Z');
                assert_eq!(format_timestamp_nanos(nanos, true), expected);
            }
        }
    }

    #[test]
    fn the_fast_path_agrees_with_chrono() {
        for text in [
            "2020-07-17T18:00:22Z",
            "2020-07-17T18:00:22.123456Z",
            "1969-12-31T23:59:59.999999999Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.5+05:30",
            "2024-02-29T12:00:00-08:00",
            "2000-03-01T00:00:00.1Z",
        ] {
            let fast = parse_canonical(text.as_bytes()).unwrap();
            let chrono = DateTime::parse_from_rfc3339(text).unwrap();
            let expected = chrono.timestamp() as i128 * 1_000_000_000
                + chrono.timestamp_subsec_nanos() as i128;
            assert_eq!(fast, expected, "{text}");
        }
        for text in [
            "2023-02-29T00:00:00Z",
            "2020-13-01T00:00:00Z",
            "2020-07-17 18:00:22Z",
            "2020-07-17T18:00:22",
        ] {
            assert_eq!(parse_canonical(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(parse_time_nanos("00:00:01Z"), Some(1_000_000_000));
        assert_eq!(
            parse_time_nanos("10:15:30.5+01:00"),
            Some((9 * 3600 + 15 * 60 + 30) * 1_000_000_000 + 500_000_000)
        );
        assert_eq!(
            parse_time_nanos("00:30:00+01:00"),
            Some(23 * 3600 * 1_000_000_000 + 30 * 60 * 1_000_000_000)
        );
        assert_eq!(parse_time_nanos("18:00"), Some(18 * 3600 * 1_000_000_000));
        assert_eq!(parse_time_nanos("nope"), None);
        assert_eq!(format_time_nanos(64_822_000_000_000), "18:00:22");
        assert_eq!(format_time_nanos(1_500_000), "00:00:00.001500");
    }
}
