//! Properties of every parser that reads what another party wrote: durations (flags, CRD
//! fields), drain requests (the admin API), reports and directives (the report channel). Any
//! input, however malformed, gets an answer — never a panic — and what is accepted keeps the
//! bounds the rest of the code relies on.

use std::time::Duration;

use ballast_contract::duration::{parse_duration, DURATION_PATTERN};
use ballast_contract::report::{Answer, Directives, DrainDirective, Report};
use ballast_contract::DrainRequest;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The schema's pattern and the parser agree on every string of the grammar's alphabet.
    #[test]
    fn durations_are_accepted_exactly_where_the_pattern_matches(text in "[0-9.mshx -]{0,10}") {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        let parsed = parse_duration(&text);
        prop_assert_eq!(parsed.is_ok(), pattern.is_match(text.trim()), "{:?} → {:?}", text, parsed);
    }

    #[test]
    fn durations_add_up_their_parts(h in 0u64..1_000, m in 0u64..1_000, s in 0u64..100_000, ms in 0u64..1_000) {
        let text = format!("{h}h{m}m{s}s{ms}ms");
        let expected = Duration::from_secs(h * 3_600 + m * 60 + s) + Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&text), Ok(expected));
    }

    #[test]
    fn any_text_is_a_duration_or_an_error(text in "\\PC{0,40}") {
        let _ = parse_duration(&text);
    }

    /// Whatever bytes reach `POST /drain`, an accepted request spreads its closes over at
    /// least a second and at most a week.
    #[test]
    fn accepted_drain_requests_have_a_real_window(body in drain_bodies()) {
        if let Ok(request) = serde_json::from_slice::<DrainRequest>(&body) {
            if let Ok(window) = request.validate() {
                prop_assert!(window >= Duration::from_secs(1), "{:?}", request);
                prop_assert!(window <= Duration::from_secs(7 * 86_400), "{:?}", request);
            }
        }
    }

    #[test]
    fn any_bytes_are_a_report_an_answer_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<Report>(&bytes);
        let _ = serde_json::from_slice::<Answer>(&bytes);
        let _ = serde_json::from_slice::<Directives>(&bytes);
        let _ = serde_json::from_slice::<DrainRequest>(&bytes);
    }

    /// Directives a sidecar acts on always lapse within a minute and never drain faster than
    /// the shortest window.
    #[test]
    fn valid_directives_are_bounded(
        expires in prop_oneof![any::<f64>(), -1.0f64..120.0],
        over in prop_oneof![any::<f64>(), -1.0f64..120.0],
        quota in proptest::option::of(0u64..10),
        accepting in proptest::option::of(any::<bool>()),
        drain in any::<bool>(),
    ) {
        let d = Directives {
            protocol_version: 1,
            id: 1,
            expires_in_seconds: expires,
            accepting,
            admission_quota: quota,
            drain: drain.then(|| DrainDirective {
                connections: 10,
                over_seconds: over,
                older_certificate_first: true,
                why: String::new(),
            }),
        };
        if d.validate().is_ok() {
            prop_assert!(expires > 0.0 && expires <= Directives::MAX_LIFETIME_SECONDS);
            if let Some(drain) = &d.drain {
                prop_assert!(drain.over_seconds >= Directives::MIN_DRAIN_SECONDS);
                prop_assert!(drain.over_seconds <= expires);
            }
            prop_assert!(quota != Some(0) || accepting == Some(false));
        }
    }

    /// A report survives the wire unchanged.
    #[test]
    fn reports_round_trip(total in any::<u64>(), older in any::<u64>(), seq in any::<u64>(), rate in 0.0f64..1e6) {
        let mut report = Report::default();
        report.connections.total = total;
        report.connections.on_older_certificate = older;
        report.sequence = seq;
        report.handshakes.per_second = rate;
        let wire = serde_json::to_vec(&report).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Report>(&wire).unwrap(), report);
    }
}

/// Drain request bodies: well-formed ones with any numbers, and mangled ones.
fn drain_bodies() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        any::<f64>().prop_map(|f| f.to_string()),
        (-10i64..1_000_000).prop_map(|n| n.to_string()),
        Just("1e308".to_owned()),
        Just("-0".to_owned()),
        Just("\"5\"".to_owned()),
    ];
    let connections = prop_oneof![
        (0u64..100_000).prop_map(|n| n.to_string()),
        Just("\"all\"".to_owned()),
        Just("\"half\"".to_owned()),
        Just("-1".to_owned()),
    ];
    let good = (connections, number)
        .prop_map(|(c, s)| format!("{{\"connections\": {c}, \"over_seconds\": {s}}}").into_bytes());
    prop_oneof![good, proptest::collection::vec(any::<u8>(), 0..64)]
}

/// The case the property found before serde_json parsed floats exactly (`float_roundtrip`).
#[test]
fn a_rate_that_once_came_back_one_ulp_off_round_trips() {
    let mut report = Report::default();
    report.handshakes.per_second = 94248.68521016723;
    let wire = serde_json::to_vec(&report).unwrap();
    let back = serde_json::from_slice::<Report>(&wire).unwrap();
    assert_eq!(
        back.handshakes.per_second.to_bits(),
        94248.68521016723f64.to_bits()
    );
}
