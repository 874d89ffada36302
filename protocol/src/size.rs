//! Amounts of memory as people write them: `512MiB`, `4GiB`, `1.5G`, `2000000`.
//!
//! [`parse_size`] is a `const fn`, so a size written in a task's attribute is checked when the
//! program compiles. [`SizeText`] writes a size back the way a person reads it.

use std::fmt;

/// Why a size did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// Nothing, or no digits before the unit.
    NoNumber,
    /// A unit that is not one of `B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB`,
    /// `T`/`TB`/`TiB` (case-insensitive).
    BadUnit,
    /// More than 2⁶⁴ bytes.
    TooLarge,
    /// Zero bytes: a limit of nothing is a mistake.
    Zero,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SizeError::NoNumber => "no number (write e.g. 512MiB, 4GiB or 1.5G)",
            SizeError::BadUnit => "unknown unit (use B, KiB, MiB, GiB or TiB; K, M, G, T also)",
            SizeError::TooLarge => "more than 2^64 bytes",
            SizeError::Zero => "zero bytes",
        })
    }
}

impl std::error::Error for SizeError {}

/// Bytes in `text`: a number (decimals allowed, e.g. `1.5`), optional spaces, then an optional
/// unit. `K`, `M`, `G`, `T` with or without `B` or `iB` are powers of 1024 — memory is counted
/// in those, and `4G` of memory means 4 GiB to everyone who sets a limit.
pub const fn parse_size(text: &str) -> Result<u64, SizeError> {
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() && bytes[at] == b' ' {
        at += 1;
    }
    // The number as an integer part and a fraction in millionths.
    let mut whole: u128 = 0;
    let mut digits = 0;
    while at < bytes.len() && bytes[at].is_ascii_digit() {
        whole = whole * 10 + (bytes[at] - b'0') as u128;
        if whole > u64::MAX as u128 {
            return Err(SizeError::TooLarge);
        }
        at += 1;
        digits += 1;
    }
    let mut millionths: u128 = 0;
    if at < bytes.len() && bytes[at] == b'.' {
        at += 1;
        let mut scale = 100_000;
        while at < bytes.len() && bytes[at].is_ascii_digit() {
            millionths += (bytes[at] - b'0') as u128 * scale;
            scale /= 10;
            at += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return Err(SizeError::NoNumber);
    }
    while at < bytes.len() && bytes[at] == b' ' {
        at += 1;
    }
    let shift = match bytes.len() - at {
        0 => 0,
        _ => {
            let shift = match bytes[at].to_ascii_uppercase() {
                b'B' => 0,
                b'K' => 10,
                b'M' => 20,
                b'G' => 30,
                b'T' => 40,
                _ => return Err(SizeError::BadUnit),
            };
            let rest = bytes.len() - at - 1;
            let ok = match rest {
                0 => true,
                1 => shift > 0 && bytes[at + 1].eq_ignore_ascii_case(&b'B'),
                2 => {
                    shift > 0
                        && bytes[at + 1].eq_ignore_ascii_case(&b'i')
                        && bytes[at + 2].eq_ignore_ascii_case(&b'B')
                }
                _ => false,
            };
            if !ok {
                return Err(SizeError::BadUnit);
            }
            shift
        }
    };
    let total = (whole << shift) + ((millionths << shift) / 1_000_000);
    if total > u64::MAX as u128 {
        return Err(SizeError::TooLarge);
    }
    if total == 0 {
        return Err(SizeError::Zero);
    }
    Ok(total as u64)
}

/// A size written for people: `512 B`, `3.2 MiB`, `4.0 GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeText(pub u64);

impl fmt::Display for SizeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        let n = self.0;
        if n < 1024 {
            return write!(f, "{n} B");
        }
        let mut value = n as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_people_write_them() {
        for (text, bytes) in [
            ("2000000", 2_000_000),
            ("512MiB", 512 << 20),
            ("512 MiB", 512 << 20),
            ("4GiB", 4 << 30),
            ("4G", 4 << 30),
            ("4gb", 4 << 30),
            ("1.5G", 3 << 29),
            ("64k", 64 << 10),
            ("1T", 1 << 40),
            ("10B", 10),
            (" 7 ", 7),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        const LIMIT: u64 = match parse_size("2GiB") {
            Ok(n) => n,
            Err(_) => panic!("does not parse"),
        };
        assert_eq!(LIMIT, 2 << 30);
    }

    #[test]
    fn bad_sizes_say_why() {
        for (text, error) in [
            ("", SizeError::NoNumber),
            ("GiB", SizeError::NoNumber),
            ("-1G", SizeError::NoNumber),
            ("4 gigs", SizeError::BadUnit),
            ("4Bi", SizeError::BadUnit),
            ("4iB", SizeError::BadUnit),
            ("4X", SizeError::BadUnit),
            ("0", SizeError::Zero),
            ("0.0000001K", SizeError::Zero),
            ("99999999999999999999", SizeError::TooLarge),
            ("20000000T", SizeError::TooLarge),
        ] {
            assert_eq!(parse_size(text), Err(error), "{text}");
        }
    }

    #[test]
    fn sizes_print_for_people() {
        assert_eq!(SizeText(512).to_string(), "512 B");
        assert_eq!(SizeText(3 << 20).to_string(), "3.0 MiB");
        assert_eq!(SizeText((4 << 30) + (1 << 29)).to_string(), "4.5 GiB");
    }
}
