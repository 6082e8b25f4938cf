//! Human durations for the command line: `500ms`, `10s`, `5m`, `1h`, `1m30s`, `1.5s`.
//!
//! Flags such as `--offline-threshold 60s` read like the `PresenceCluster` fields they
//! mirror, so the fleet accepts the same shapes instead of bare numbers of unknown unit.

use std::time::Duration;

/// Parses a duration made of one or more `<number><unit>` parts, unit one of
/// `ms`, `s`, `m`, `h`. A bare `0` is accepted; any other bare number is refused because
/// its unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?}: missing unit (ms, s, m, h)"))?;
        if number_len == 0 {
            return Err(format!("{text:?}: expected a number before {rest:?}"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("{text:?}: bad number {:?}", &rest[..number_len]))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h)")),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("{text:?}: {e}"))
}

/// Formats a duration compactly for progress lines (`0.8s`, `12s`, `3m05s`).
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
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn parses_compound_and_fractional() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h0m1s"), Ok(Duration::from_secs(3601)));
    }

    #[test]
    fn refuses_ambiguous_or_malformed() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("1..2s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("10sec").is_err());
    }

    #[test]
    fn short_format() {
        assert_eq!(format_short(Duration::from_millis(800)), "0.8s");
        assert_eq!(format_short(Duration::from_secs(42)), "42s");
        assert_eq!(format_short(Duration::from_secs(5)), "5s");
        assert_eq!(format_short(Duration::from_millis(42_400)), "42s");
        assert_eq!(format_short(Duration::from_secs(185)), "3m05s");
    }
}
