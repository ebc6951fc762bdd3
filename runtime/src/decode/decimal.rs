//! Exact decimals: Kafka Connect's base64 two's-complement bytes and JSON number text, into
//! an unscaled integer at the column's scale. Nothing here goes through `f64`.

use arrow::datatypes::i256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Why a decimal value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecimalError {
    NotBase64,
    TooWide(usize),
    NotANumber,
    Overflow { precision: u8 },
    TooManyDigits { scale: i8 },
}

impl std::fmt::Display for DecimalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecimalError::NotBase64 => write!(f, "the decimal is not valid base64"),
            DecimalError::TooWide(n) => write!(f, "the decimal has {n} bytes; at most 32 fit"),
            DecimalError::NotANumber => write!(f, "the value is not a decimal number"),
            DecimalError::Overflow { precision } => {
                write!(
                    f,
                    "the value needs more than {precision} digits of precision"
                )
            }
            DecimalError::TooManyDigits { scale } => write!(
                f,
                "the value has more fractional digits than the column's scale {scale}"
            ),
        }
    }
}

/// How extra fractional digits are treated when a value has more than the column's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescale {
    /// Reject: the value would change. Used when the scale comes from the event's own schema.
    Exact,
    /// Round half away from zero. Used for columns declared in the pipeline, where a float
    /// source is read into a decimal (as `CAST(x AS DECIMAL(p,s))` would).
    RoundHalfUp,
}

/// Decodes base64 big-endian two's-complement bytes (Kafka Connect `Decimal`).
pub fn from_base64(text: &[u8]) -> Result<i256, DecimalError> {
    let mut buf = [0u8; 48];
    let len = BASE64
        .decode_slice(text, &mut buf)
        .map_err(|_| DecimalError::NotBase64)?;
    from_twos_complement(&buf[..len])
}

pub fn from_twos_complement(bytes: &[u8]) -> Result<i256, DecimalError> {
    if bytes.len() > 32 {
        return Err(DecimalError::TooWide(bytes.len()));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut full = if negative { [0xffu8; 32] } else { [0u8; 32] };
    full[32 - bytes.len()..].copy_from_slice(bytes);
    Ok(i256::from_be_bytes(full))
}

/// Powers of ten that fit an i128 (10^0 to 10^38).
pub const POW10: [i128; 39] = {
    let mut table = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// The common case of [`from_text`] without allocating: plain digits with at most `scale`
/// fractional digits and at most 36 digits in all. `None` means "use the general path",
/// not "invalid".
#[inline]
pub fn from_text_fast(text: &[u8], scale: i8) -> Option<i128> {
    let (negative, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    let mut value: i128 = 0;
    let mut count = 0;
    let mut fraction: i32 = -1;
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                value = value * 10 + (b - b'0') as i128;
                count += 1;
                if fraction >= 0 {
                    fraction += 1;
                }
                if count > 36 {
                    return None;
                }
            }
            b'.' if fraction < 0 => fraction = 0,
            _ => return None,
        }
    }
    let fraction = fraction.max(0);
    if count == 0 || fraction > scale as i32 || scale > 38 {
        return None;
    }
    let value = value.checked_mul(POW10[(scale as i32 - fraction) as usize])?;
    Some(if negative { -value } else { value })
}

/// Parses JSON number text (`-12.5`, `1e-7`, `3.140000104904175`) exactly and rescales it
/// to `scale`.
pub fn from_text(text: &[u8], scale: i8, rescale: Rescale) -> Result<i256, DecimalError> {
    let (negative, rest) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.iter().position(|b| *b == b'e' || *b == b'E') {
        Some(i) => {
            let exp = std::str::from_utf8(&rest[i + 1..])
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                .ok_or(DecimalError::NotANumber)?;
            (&rest[..i], exp)
        }
        None => (rest, 0),
    };
    let mut digits: Vec<u8> = Vec::with_capacity(mantissa.len());
    let mut fraction_digits: i32 = 0;
    let mut seen_point = false;
    for &b in mantissa {
        match b {
            b'0'..=b'9' => {
                digits.push(b - b'0');
                if seen_point {
                    fraction_digits += 1;
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => return Err(DecimalError::NotANumber),
        }
    }
    if digits.is_empty() {
        return Err(DecimalError::NotANumber);
    }
    // value = digits * 10^(exponent - fraction_digits); we want value * 10^scale.
    let shift = exponent - fraction_digits + scale as i32;
    let mut keep = digits.len() as i32 + shift.min(0);
    let mut round_up = false;
    if shift < 0 {
        // Digits beyond the scale: they must be zero, or rounded away when allowed.
        let dropped_from = keep.max(0) as usize;
        let dropped = &digits[dropped_from.min(digits.len())..];
        if dropped.iter().any(|d| *d != 0) {
            match rescale {
                Rescale::Exact => return Err(DecimalError::TooManyDigits { scale }),
                // When every digit is dropped and more (keep < 0), the first dropped
                // position is an implicit zero, so the value rounds to zero.
                Rescale::RoundHalfUp => {
                    round_up = keep >= 0 && dropped.first().is_some_and(|d| *d >= 5)
                }
            }
        }
        if keep < 0 {
            keep = 0;
        }
    }
    let ten = i256::from_i128(10);
    let overflow = DecimalError::Overflow { precision: 76 };
    let mut value = i256::ZERO;
    for d in &digits[..keep as usize] {
        value = value
            .checked_mul(ten)
            .and_then(|v| v.checked_add(i256::from_i128(*d as i128)))
            .ok_or(overflow.clone())?;
    }
    for _ in 0..shift.max(0) {
        value = value.checked_mul(ten).ok_or(overflow.clone())?;
    }
    if round_up {
        value = value.checked_add(i256::ONE).ok_or(overflow)?;
    }
    Ok(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

/// Changes the scale of an unscaled value (used when the event's schema scale differs from
/// the column's, e.g. after a widening).
pub fn rescale(value: i256, from: i8, to: i8, rescale: Rescale) -> Result<i256, DecimalError> {
    if from == to {
        return Ok(value);
    }
    let ten = i256::from_i128(10);
    if to > from {
        let factor = ten
            .checked_pow((to - from) as u32)
            .ok_or(DecimalError::Overflow { precision: 76 })?;
        return value
            .checked_mul(factor)
            .ok_or(DecimalError::Overflow { precision: 76 });
    }
    let factor = ten.wrapping_pow((from - to) as u32);
    let quotient = value.wrapping_div(factor);
    let remainder = value.wrapping_rem(factor);
    if remainder == i256::ZERO {
        return Ok(quotient);
    }
    match rescale {
        Rescale::Exact => Err(DecimalError::TooManyDigits { scale: to }),
        Rescale::RoundHalfUp => {
            let twice = remainder.wrapping_abs().wrapping_mul(i256::from_i128(2));
            if twice >= factor {
                Ok(quotient.wrapping_add(value.signum()))
            } else {
                Ok(quotient)
            }
        }
    }
}

/// Checks that `value` has at most `precision` digits.
pub fn check_precision(value: i256, precision: u8) -> Result<(), DecimalError> {
    if let (Some(v), Some(limit)) = (value.to_i128(), POW10.get(precision as usize)) {
        return check_precision_i128(v, precision, *limit);
    }
    let limit = i256::from_i128(10).checked_pow(precision as u32);
    match limit {
        Some(limit) if value.wrapping_abs() >= limit => Err(DecimalError::Overflow { precision }),
        _ => Ok(()),
    }
}

/// [`check_precision`] for a value that fits an i128 and a precision of at most 38.
#[inline]
pub fn check_precision_i128(value: i128, precision: u8, limit: i128) -> Result<(), DecimalError> {
    if value.unsigned_abs() < limit as u128 {
        Ok(())
    } else {
        Err(DecimalError::Overflow { precision })
    }
}

/// Formats an unscaled value with its scale: `(1234567, 4)` is `123.4567`.
pub fn format(unscaled: i256, scale: i8) -> String {
    let negative = unscaled.is_negative();
    // Nearly every value fits 128 bits, whose digits are far cheaper to write.
    let digits = match unscaled.to_i128() {
        Some(small) => itoa::Buffer::new().format(small.unsigned_abs()).to_string(),
        None => unscaled.wrapping_abs().to_string(),
    };
    let mut out = String::with_capacity(digits.len() + 3);
    if negative {
        out.push('-');
    }
    if scale <= 0 {
        out.push_str(&digits);
        if digits != "0" {
            out.extend(std::iter::repeat_n('0', (-scale) as usize));
        }
        return out;
    }
    let scale = scale as usize;
    if digits.len() <= scale {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    } else {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str, scale: i8) -> Result<String, DecimalError> {
        from_text(s.as_bytes(), scale, Rescale::Exact).map(|v| format(v, scale))
    }

    fn rounded(s: &str, scale: i8) -> String {
        format(
            from_text(s.as_bytes(), scale, Rescale::RoundHalfUp).unwrap(),
            scale,
        )
    }

    #[test]
    fn base64_matches_the_flink_cdc_pairs() {
        // Pairs from the flink-cdc full_types fixture (base64 file vs numeric file).
        assert_eq!(format(from_base64(b"AQ==").unwrap(), 0), "1");
        assert_eq!(
            format(from_base64(b"AP//////////").unwrap(), 0),
            "18446744073709551615"
        );
        assert_eq!(format(from_base64(b"EtaH").unwrap(), 4), "123.4567");
        assert_eq!(format(from_base64(b"AVo=").unwrap(), 0), "346");
        assert_eq!(format(from_base64(b"FJqkSQ==").unwrap(), 1), "34567892.1");
        assert_eq!(format(from_base64(b"/w==").unwrap(), 2), "-0.01");
        assert_eq!(from_base64(b"not base64!"), Err(DecimalError::NotBase64));
    }

    #[test]
    fn text_is_exact_to_the_last_digit() {
        assert_eq!(text("123.4567", 4).unwrap(), "123.4567");
        assert_eq!(text("123.45", 4).unwrap(), "123.4500");
        assert_eq!(text("-0.5", 1).unwrap(), "-0.5");
        assert_eq!(text("1e-7", 7).unwrap(), "0.0000001");
        assert_eq!(text("1.5E+3", 0).unwrap(), "1500");
        assert_eq!(
            text("18446744073709551615", 0).unwrap(),
            "18446744073709551615"
        );
        // 65 digits, beyond i128: DECIMAL(65,1) from MySQL.
        let big = "1234567890123456789012345678901234567890123456789012345678901234.5";
        assert_eq!(text(big, 1).unwrap(), big);
        assert_eq!(
            text("1.25", 1),
            Err(DecimalError::TooManyDigits { scale: 1 })
        );
        assert_eq!(
            text("1.20", 1).unwrap(),
            "1.2",
            "trailing zeros are not extra digits"
        );
        assert_eq!(text("abc", 1), Err(DecimalError::NotANumber));
        assert_eq!(text("", 1), Err(DecimalError::NotANumber));
    }

    #[test]
    fn declared_columns_round_half_up_from_the_text_not_a_float() {
        assert_eq!(rounded("3.140000104904175", 3), "3.140");
        assert_eq!(rounded("0.100000001490116", 3), "0.100");
        assert_eq!(rounded("2.0005", 3), "2.001");
        assert_eq!(rounded("-2.0005", 3), "-2.001");
        assert_eq!(rounded("0.0004", 3), "0.000");
        assert_eq!(rounded("999.9995", 3), "1000.000");
        assert_eq!(rounded("5e-10", 3), "0.000");
        assert_eq!(rounded("5e-1", 0), "1");
    }

    #[test]
    fn the_fast_path_agrees_with_the_general_one() {
        for (text, scale) in [
            ("123.4567", 4),
            ("123.45", 4),
            ("-0.5", 1),
            ("7", 2),
            ("0.00", 2),
            ("99999999.99", 2),
        ] {
            let fast = from_text_fast(text.as_bytes(), scale).unwrap();
            let general = from_text(text.as_bytes(), scale, Rescale::Exact).unwrap();
            assert_eq!(i256::from_i128(fast), general, "{text}");
        }
        for text in [
            "1e3",
            "1.234",
            "",
            "-",
            "1.2.3",
            "12345678901234567890123456789012345678",
        ] {
            assert_eq!(from_text_fast(text.as_bytes(), 2), None, "{text}");
        }
    }

    #[test]
    fn rescaling_and_precision() {
        let v = from_text(b"12.345", 3, Rescale::Exact).unwrap();
        assert_eq!(
            format(rescale(v, 3, 5, Rescale::Exact).unwrap(), 5),
            "12.34500"
        );
        assert!(rescale(v, 3, 2, Rescale::Exact).is_err());
        assert_eq!(
            format(rescale(v, 3, 2, Rescale::RoundHalfUp).unwrap(), 2),
            "12.35"
        );
        assert!(check_precision(v, 5).is_ok());
        assert!(check_precision(v, 4).is_err());
        assert_eq!(format(i256::from_i128(5), -2), "500");
        assert_eq!(format(i256::ZERO, 2), "0.00");
    }
}
