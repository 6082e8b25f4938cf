//! The one duration grammar: `500ms`, `10s`, `5m`, `1h`, `1m30s`, `1.5s`, `0`.
//!
//! Every duration Ballast reads — the sidecar's and the operator's flags, the fleet's, the
//! `PresenceCluster` fields — is one or more `<number><unit>` parts, the number a decimal
//! without sign or exponent (`10`, `2.5`), the unit one of `ms`, `s`, `m`, `h`. A bare `0` is
//! accepted; any other bare number is refused because its unit would be a guess.
//! [`DURATION_PATTERN`] is the same grammar as a regular expression, for CRD schemas.

use std::time::Duration;

/// A regular expression (anchored) that matches exactly what [`parse_duration`] accepts,
/// leading and trailing whitespace aside, for `pattern` in OpenAPI schemas.
pub const DURATION_PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$";

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration in the grammar above; surrounding whitespace is ignored. Fractions finer
/// than a nanosecond are dropped.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let whole_len = leading_digits(rest);
        if whole_len == 0 {
            return Err(format!(
                "{text:?}: expected a number before {rest:?} (like 500ms, 10s, 5m, 1h30m)"
            ));
        }
        let whole = &rest[..whole_len];
        rest = &rest[whole_len..];
        let mut fraction = "";
        if let Some(after_point) = rest.strip_prefix('.') {
            let fraction_len = leading_digits(after_point);
            if fraction_len == 0 {
                return Err(format!("{text:?}: expected digits after {whole:?}."));
            }
            fraction = &after_point[..fraction_len];
            rest = &after_point[fraction_len..];
        }
        let (unit_nanos, unit_len) = if rest.starts_with("ms") {
            (1_000_000, 2)
        } else if rest.starts_with('s') {
            (NANOS_PER_SEC, 1)
        } else if rest.starts_with('m') {
            (60 * NANOS_PER_SEC, 1)
        } else if rest.starts_with('h') {
            (3600 * NANOS_PER_SEC, 1)
        } else if rest.is_empty() {
            return Err(format!(
                "{text:?}: missing unit after {whole:?} (ms, s, m, h; a bare number's unit would be a guess)"
            ));
        } else {
            let unit: String = rest.chars().take_while(|c| !c.is_ascii_digit()).collect();
            return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)"));
        };
        rest = &rest[unit_len..];
        let part = part_nanos(whole, fraction, unit_nanos)
            .ok_or_else(|| format!("{text:?}: too long a duration"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("{text:?}: too long a duration"))?;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC)
        .map_err(|_| format!("{text:?}: too long a duration"))?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

fn leading_digits(s: &str) -> usize {
    s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len())
}

/// `whole.fraction` units, in nanoseconds, exactly (fractions of a nanosecond dropped).
fn part_nanos(whole: &str, fraction: &str, unit_nanos: u128) -> Option<u128> {
    let mut nanos = whole.parse::<u128>().ok()?.checked_mul(unit_nanos)?;
    let mut scale = unit_nanos;
    for digit in fraction.bytes() {
        scale /= 10;
        if scale == 0 {
            break;
        }
        nanos = nanos.checked_add(u128::from(digit - b'0') * scale)?;
    }
    Some(nanos)
}

/// Formats a duration compactly for progress lines (`0.8s`, `12s`, `3m05s`); the result is
/// always in the grammar, so it parses back (to the precision shown).
pub fn format_short(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if d.subsec_nanos() == 0 && secs < 120.0 {
        format!("{}s", d.as_secs())
    } else if secs < 10.0 {
        format!("{secs:.1}s")
    } else if secs < 120.0 {
        format!("{secs:.0}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn parses_compound_and_fractional() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h0m1s"), Ok(Duration::from_secs(3601)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.0000000001s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn refuses_ambiguous_or_malformed() {
        for bad in [
            "", "10", "2.5", "-1", "00", "s", "10x", "1..2s", "-1s", "10sec", "1.s", ".5s",
            "1m.5s", "1e3s", "1 s", "soon", "1d", "1us",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("99999999999999999999999999h").is_err());
    }

    #[test]
    fn a_bare_number_is_refused_with_a_reason() {
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("missing unit"), "{err}");
    }

    #[test]
    fn short_format() {
        assert_eq!(format_short(Duration::from_millis(800)), "0.8s");
        assert_eq!(format_short(Duration::from_secs(42)), "42s");
        assert_eq!(format_short(Duration::from_secs(5)), "5s");
        assert_eq!(format_short(Duration::from_millis(42_400)), "42s");
        assert_eq!(format_short(Duration::from_secs(185)), "3m05s");
    }

    #[test]
    fn short_format_round_trips_what_it_shows_exactly() {
        let mut samples: Vec<Duration> = (0..600).map(Duration::from_secs).collect();
        samples.extend((0..100).map(|tenths| Duration::from_millis(tenths * 100)));
        samples.extend([3600, 5400, 86_400].map(Duration::from_secs));
        for d in samples {
            let text = format_short(d);
            assert_eq!(parse_duration(&text), Ok(d), "{d:?} formatted as {text:?}");
        }
    }

    #[test]
    fn short_format_always_parses_back_close() {
        for millis in (0..400_000).step_by(37) {
            let d = Duration::from_millis(millis);
            let text = format_short(d);
            let back = parse_duration(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let error = back.abs_diff(d);
            assert!(error <= Duration::from_secs(1), "{d:?} → {text} → {back:?}");
        }
    }

    #[test]
    fn the_pattern_accepts_exactly_what_the_parser_accepts() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for text in [
            "0", "0s", "500ms", "10s", "5m", "1h", "1m30s", "1.5s", "2.5s", "1h0m1s", "10m", "60s",
            "6h", "1s1s", "0.001ms", "", "10", "2.5", "-1", "00", "s", "10x", "1..2s", "-1s",
            "10sec", "1.s", ".5s", "1m.5s", "1e3s", "1 s", "soon", "1d", "1us", "ms", "1msm",
            "1sms", "0ms", "01s",
        ] {
            assert_eq!(
                pattern.is_match(text),
                parse_duration(text).is_ok(),
                "pattern and parser disagree on {text:?}"
            );
        }
    }
}
