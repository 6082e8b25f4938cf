//! The session-ticket keys a PresenceCluster's sidecars share: the file the operator writes
//! into the `<cluster>-ticket-keys` Secret and every sidecar reads, and the one rule for which
//! key encrypts, which decrypt, and when the operator rotates.
//!
//! Why shared keys: an agent moved off one pod by a drain resumes its TLS session on the next
//! pod (a quarter of a full handshake's cost or less) only if that pod can decrypt the ticket
//! the first one issued. Peers leave it to a person to distribute and rotate such keys
//! (HAProxy's `tls-ticket-keys`, nginx's `ssl_session_ticket_key`); here the operator does.
//!
//! Every key carries its own times, so a sidecar enforces expiry by itself, without the
//! operator: a key encrypts new tickets in `[encryptFrom, encryptUntil)` and decrypts tickets
//! until `decryptUntil`. The operator publishes the next key one rotation interval before it
//! starts encrypting (so the kubelet's Secret propagation never makes one pod issue tickets the
//! others cannot read yet) and keeps a retired key for one more interval (the tickets' lifetime)
//! so that tickets issued just before a rotation still resume.
//!
//! Plain data and pure functions: no I/O, no randomness (the caller supplies fresh keys), no
//! cryptography (the sidecar owns the AEAD). Secrets never reach `Debug` output.

use serde::{Deserialize, Serialize};

/// Key of the file inside the Secret (and its name in the mounted volume).
pub const FILE_NAME: &str = "ticket-keys.json";
/// Version of the file's format.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of a key's name, which starts every ticket so a sidecar finds the key without trying
/// them all (and a ticket from another cluster's keys is refused at a glance).
pub const NAME_LEN: usize = 16;
/// Bytes of a key's secret (AES-256-GCM).
pub const SECRET_LEN: usize = 32;
/// More keys than a rotation ever needs at once (retired, current, next) is a broken file.
pub const MAX_KEYS: usize = 8;
/// The shortest rotation interval: the kubelet takes up to a minute or two to bring a changed
/// Secret to every pod, and the next key must be everywhere before it encrypts.
pub const MIN_ROTATION_SECONDS: i64 = 300;

/// One key and its schedule (Unix seconds).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TicketKey {
    /// Hex of [`NAME_LEN`] random bytes.
    pub name: String,
    /// Hex of [`SECRET_LEN`] random bytes.
    pub secret: String,
    pub encrypt_from: i64,
    pub encrypt_until: i64,
    pub decrypt_until: i64,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("encrypt_from", &self.encrypt_from)
            .field("encrypt_until", &self.encrypt_until)
            .field("decrypt_until", &self.decrypt_until)
            .finish()
    }
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TicketKeys {
    pub version: u32,
    pub keys: Vec<TicketKey>,
}

/// A key's name and secret, decoded and checked.
pub struct KeyBytes {
    pub name: [u8; NAME_LEN],
    pub secret: [u8; SECRET_LEN],
}

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBytes")
            .field("name", &hex(&self.name))
            .finish_non_exhaustive()
    }
}

impl TicketKey {
    /// A key that encrypts for `interval` seconds from `from` and decrypts for one interval
    /// more (the tickets' lifetime).
    pub fn scheduled(bytes: &KeyBytes, from: i64, interval: i64) -> Self {
        Self {
            name: hex(&bytes.name),
            secret: hex(&bytes.secret),
            encrypt_from: from,
            encrypt_until: from + interval,
            decrypt_until: from + 2 * interval,
        }
    }

    /// Name and secret as bytes; the error says which field is wrong, never its value.
    pub fn bytes(&self) -> Result<KeyBytes, String> {
        let name = unhex::<NAME_LEN>(&self.name)
            .ok_or_else(|| format!("key name must be {} hex digits", 2 * NAME_LEN))?;
        let secret = unhex::<SECRET_LEN>(&self.secret).ok_or_else(|| {
            format!(
                "secret of key {} must be {} hex digits",
                self.name,
                2 * SECRET_LEN
            )
        })?;
        Ok(KeyBytes { name, secret })
    }

    pub fn encrypts_at(&self, now: i64) -> bool {
        self.encrypt_from <= now && now < self.encrypt_until
    }

    pub fn decrypts_at(&self, now: i64) -> bool {
        now < self.decrypt_until
    }

    /// Seconds a ticket issued now stays useful: until this key stops decrypting.
    pub fn ticket_lifetime_at(&self, now: i64) -> i64 {
        (self.decrypt_until - now).max(0)
    }
}

impl TicketKeys {
    /// Parses and checks a file: version, key count, hex lengths, unique names, and times in
    /// order. Errors name the problem, never a secret.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let keys: Self =
            serde_json::from_slice(text).map_err(|e| format!("not a ticket-key file: {e}"))?;
        if keys.version != FORMAT_VERSION {
            return Err(format!(
                "format version {} (this sidecar reads {FORMAT_VERSION})",
                keys.version
            ));
        }
        if keys.keys.is_empty() || keys.keys.len() > MAX_KEYS {
            return Err(format!(
                "{} keys (expected 1 to {MAX_KEYS})",
                keys.keys.len()
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for key in &keys.keys {
            key.bytes()?;
            if !names.insert(&key.name) {
                return Err(format!("key {} appears twice", key.name));
            }
            if !(key.encrypt_from < key.encrypt_until && key.encrypt_until <= key.decrypt_until) {
                return Err(format!(
                    "key {}: times out of order (encryptFrom < encryptUntil <= decryptUntil)",
                    key.name
                ));
            }
        }
        Ok(keys)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("ticket keys serialize")
    }

    /// The key new tickets are encrypted with at `now`: of those in their encryption window,
    /// the one that started last. `None`: issue no ticket (full handshakes still work).
    pub fn encrypting(&self, now: i64) -> Option<&TicketKey> {
        self.keys
            .iter()
            .filter(|k| k.encrypts_at(now))
            .max_by_key(|k| k.encrypt_from)
    }

    /// The operator's rotation: drop keys that decrypt no more, make sure one key encrypts
    /// now and the next is published a whole `interval` before it takes over. `fresh` makes
    /// new random keys. Returns the new set, or `None` when nothing needs to change (so an
    /// unchanged Secret is not rewritten).
    pub fn rotate(
        current: Option<&Self>,
        now: i64,
        interval: i64,
        mut fresh: impl FnMut() -> KeyBytes,
    ) -> Option<Self> {
        let interval = interval.max(MIN_ROTATION_SECONDS);
        let mut keys: Vec<TicketKey> = current
            .map(|c| {
                c.keys
                    .iter()
                    .filter(|k| k.decrypts_at(now))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut changed = current.is_none_or(|c| c.keys.len() != keys.len());
        let encrypting_until = match keys
            .iter()
            .filter(|k| k.encrypts_at(now))
            .max_by_key(|k| k.encrypt_from)
        {
            Some(k) => k.encrypt_until,
            None => {
                keys.push(TicketKey::scheduled(&fresh(), now, interval));
                changed = true;
                now + interval
            }
        };
        if !keys.iter().any(|k| k.encrypt_from >= encrypting_until) {
            keys.push(TicketKey::scheduled(&fresh(), encrypting_until, interval));
            changed = true;
        }
        keys.sort_by_key(|k| k.encrypt_from);
        changed.then_some(Self {
            version: FORMAT_VERSION,
            keys,
        })
    }

    /// When the set next needs the operator: the earliest time a key stops decrypting or the
    /// current key hands over to the next (after which a new next key is due).
    pub fn next_change(&self, now: i64) -> Option<i64> {
        self.keys
            .iter()
            .flat_map(|k| [k.encrypt_until, k.decrypt_until])
            .filter(|t| *t > now)
            .min()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    fn counter() -> impl FnMut() -> KeyBytes {
        let mut n = 0u8;
        move || {
            n += 1;
            KeyBytes {
                name: [n; NAME_LEN],
                secret: [n.wrapping_mul(7); SECRET_LEN],
            }
        }
    }

    #[test]
    fn a_first_rotation_makes_the_current_and_the_next_key() {
        let keys = TicketKeys::rotate(None, 1000, HOUR, counter()).unwrap();
        assert_eq!(keys.keys.len(), 2);
        let current = keys.encrypting(1000).unwrap();
        assert_eq!(
            (current.encrypt_from, current.encrypt_until),
            (1000, 1000 + HOUR)
        );
        let next = &keys.keys[1];
        assert_eq!(next.encrypt_from, 1000 + HOUR);
        assert!(
            next.decrypts_at(1000),
            "published ahead: pods decrypt it before it encrypts"
        );
        // Round trip through the file.
        assert_eq!(TicketKeys::parse(keys.to_json().as_bytes()).unwrap(), keys);
    }

    #[test]
    fn nothing_changes_until_the_handover_and_then_one_key_is_added() {
        let mut fresh = counter();
        let first = TicketKeys::rotate(None, 0, HOUR, &mut fresh).unwrap();
        assert!(TicketKeys::rotate(Some(&first), HOUR - 1, HOUR, &mut fresh).is_none());
        assert_eq!(first.next_change(0), Some(HOUR));
        let second = TicketKeys::rotate(Some(&first), HOUR, HOUR, &mut fresh).unwrap();
        // Retired (still decrypting), current, next.
        assert_eq!(second.keys.len(), 3);
        assert_eq!(second.encrypting(HOUR).unwrap().name, first.keys[1].name);
        assert!(!second.keys[0].encrypts_at(HOUR) && second.keys[0].decrypts_at(HOUR));
        // After the overlap, the retired key is gone.
        let third = TicketKeys::rotate(Some(&second), 2 * HOUR, HOUR, &mut fresh).unwrap();
        assert!(third.keys.iter().all(|k| k.name != first.keys[0].name));
        assert_eq!(third.keys.len(), 3);
    }

    #[test]
    fn a_retired_key_decrypts_during_the_overlap_and_not_after() {
        let keys = TicketKeys::rotate(None, 0, HOUR, counter()).unwrap();
        let first = &keys.keys[0];
        assert!(!first.encrypts_at(HOUR + 1));
        assert!(first.decrypts_at(2 * HOUR - 1));
        assert!(!first.decrypts_at(2 * HOUR));
        assert_eq!(first.ticket_lifetime_at(HOUR - 10), HOUR + 10);
    }

    #[test]
    fn a_set_the_operator_missed_for_long_gets_a_new_current_key() {
        let first = TicketKeys::rotate(None, 0, HOUR, counter()).unwrap();
        let later = TicketKeys::rotate(Some(&first), 10 * HOUR, HOUR, counter()).unwrap();
        assert!(later.encrypting(10 * HOUR).is_some());
        assert!(later.keys.iter().all(|k| k.decrypts_at(10 * HOUR)));
    }

    #[test]
    fn bad_files_are_refused_with_a_reason_that_shows_no_secret() {
        let good = TicketKeys::rotate(None, 0, HOUR, counter()).unwrap();
        let secret = good.keys[0].secret.clone();
        let mut cases: Vec<(String, &str)> = vec![
            ("not json".into(), "not a ticket-key file"),
            (r#"{"version":1,"keys":[]}"#.into(), "0 keys"),
        ];
        let mut short = good.clone();
        short.keys[0].secret.truncate(10);
        cases.push((short.to_json(), "must be 64 hex digits"));
        let mut twice = good.clone();
        twice.keys[1].name = twice.keys[0].name.clone();
        cases.push((twice.to_json(), "appears twice"));
        let mut order = good.clone();
        order.keys[0].decrypt_until = order.keys[0].encrypt_from;
        cases.push((order.to_json(), "out of order"));
        let mut version = good.clone();
        version.version = 2;
        cases.push((version.to_json(), "format version 2"));
        for (text, expected) in cases {
            let err = TicketKeys::parse(text.as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
            assert!(!err.contains(&secret));
        }
        assert!(
            !format!("{good:?}").contains(&secret),
            "Debug shows no secret"
        );
    }
}
