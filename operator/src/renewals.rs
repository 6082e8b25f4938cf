//! Renewals that line up across PresenceClusters: several fleets rotating at once.
//!
//! Owns one decision: which other PresenceClusters' certificates expire close enough to this
//! one's that cert-manager renews them at about the same time (it renews at a fixed point
//! before expiry: `renewBefore`, by default a third of the lifetime), so their rotations —
//! drains, restarts, reconnects landing on shared backends — would overlap. Pure: the
//! observer feeds it what it saw and turns the answer into a Warning Event and a status
//! message. It never decides anything about a rotation itself.

/// Expiries closer than this are said to line up: one hour holds a RollingRestart of a
/// hundred pods at the default budget, and is well inside any sane certificate's lifetime.
pub const ALIGNED_WITHIN_SECONDS: i64 = 3_600;

/// A PresenceCluster's certificate expiry, as the observer last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub namespace: String,
    pub name: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

/// The other clusters (`namespace/name`, sorted) whose certificate expires within
/// [`ALIGNED_WITHIN_SECONDS`] of `this` one's.
pub fn aligned_with(this: &Expiry, all: &[Expiry]) -> Vec<String> {
    let mut names: Vec<String> = all
        .iter()
        .filter(|o| !(o.namespace == this.namespace && o.name == this.name))
        .filter(|o| (o.not_after - this.not_after).abs() < ALIGNED_WITHIN_SECONDS)
        .map(|o| format!("{}/{}", o.namespace, o.name))
        .collect();
    names.sort();
    names
}

/// What a person reads: which fleets, and what to do about it.
pub fn message(aligned: &[String]) -> String {
    format!(
        "the certificate expires within {} min of {}'s: cert-manager would renew them at about the same time and several fleets would rotate at once; stagger them (the Certificates' duration or renewBefore)",
        ALIGNED_WITHIN_SECONDS / 60,
        aligned.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiry(ns: &str, name: &str, not_after: i64) -> Expiry {
        Expiry {
            namespace: ns.into(),
            name: name.into(),
            not_after,
        }
    }

    #[test]
    fn only_others_close_in_time_line_up() {
        let this = expiry("presence", "edge", 1_000_000);
        let all = vec![
            this.clone(),
            expiry("presence", "west", 1_000_000 + 3_599),
            expiry("iot", "edge", 1_000_000 - 60),
            expiry("presence", "far", 1_000_000 + 3_600),
            expiry("presence", "earlier", 1_000_000 - 86_400),
        ];
        assert_eq!(
            aligned_with(&this, &all),
            vec!["iot/edge".to_string(), "presence/west".to_string()]
        );
        assert!(
            aligned_with(&this, std::slice::from_ref(&this)).is_empty(),
            "not with itself"
        );
        assert!(message(&["iot/edge".into()]).contains("within 60 min of iot/edge's"));
    }
}
