//! TLS session tickets sealed with the cluster's shared keys, so that an agent a drain moves
//! to another pod of the same PresenceCluster resumes there instead of paying a full handshake.
//!
//! The keys come from `--ticket-keys` (the operator's `<cluster>-ticket-keys` Secret, file
//! format and schedule in `ballast_contract::ticket_keys`) and are hot-reloaded like the
//! certificate: a file that does not parse is refused and the keys loaded before keep working.
//! Each key's own times are enforced here, at every use, so a retired key stops decrypting on
//! time even if the operator is gone.
//!
//! A ticket is `key name (16) ‖ nonce (12) ‖ AES-256-GCM(session state)`, authenticated with
//! the key name and the SHA-256 of the certificate being served. Binding tickets to the
//! certificate means a renewal ends resumption: an agent asked to re-handshake
//! (`reconnectExisting`) always gets a full handshake and sees the new certificate, never a
//! resumed session that skips it. Pods of one cluster serve the same certificate, so moves
//! between them resume.
//!
//! This module never logs or prints a key (its `Debug` shows names only) and never blocks a
//! handshake on I/O: the file is read by the reload task, handshakes only read memory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use ballast_contract::clock;
use ballast_contract::ticket_keys::{TicketKeys, NAME_LEN};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

use crate::metrics::Metrics;

/// TLS 1.3 caps a ticket's advertised lifetime at seven days (RFC 8446, 4.6.1).
const MAX_LIFETIME_SECONDS: i64 = 7 * 24 * 3600;

/// One key, ready to seal and open.
struct Key {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
    encrypt_from: i64,
    encrypt_until: i64,
    decrypt_until: i64,
}

/// The keys loaded from `--ticket-keys`, swapped whole on reload.
pub(crate) struct TicketKeyRing {
    path: PathBuf,
    keys: RwLock<Arc<Vec<Key>>>,
    last_file: Mutex<Option<Vec<u8>>>,
    last_failure: RwLock<Option<String>>,
    random: SystemRandom,
}

impl std::fmt::Debug for TicketKeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.read().expect("ticket keys lock");
        let names: Vec<String> = keys.iter().map(|k| short(&k.name)).collect();
        f.debug_struct("TicketKeyRing")
            .field("path", &self.path)
            .field("keys", &names)
            .finish()
    }
}

fn short(name: &[u8]) -> String {
    name.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

impl TicketKeyRing {
    /// Reads the file once. A missing or bad file at start is not fatal: the sidecar serves
    /// full handshakes (as without tickets) and picks the keys up when a good file appears.
    pub(crate) fn load(path: PathBuf) -> Self {
        let ring = Self {
            path,
            keys: RwLock::new(Arc::new(Vec::new())),
            last_file: Mutex::new(None),
            last_failure: RwLock::new(None),
            random: SystemRandom::new(),
        };
        if let Err(why) = ring.read_and_swap() {
            tracing::error!(path = %ring.path.display(), %why,
                "session-ticket keys not usable; serving full handshakes until a good file appears");
            *ring.last_failure.write().expect("ticket keys lock") = Some(why);
        }
        ring
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// How many keys are loaded (retired, current and next).
    pub(crate) fn loaded(&self) -> usize {
        self.keys.read().expect("ticket keys lock").len()
    }

    /// Why the last file was refused, until a good one is loaded.
    pub(crate) fn last_failure(&self) -> Option<String> {
        self.last_failure.read().expect("ticket keys lock").clone()
    }

    /// Looks at the file and swaps in its keys if it changed and is good. Returns whether new
    /// keys are in use; a refused file is reported once.
    pub(crate) fn reload_if_changed(&self, metrics: &Metrics) -> bool {
        match self.read_and_swap() {
            Ok(true) => {
                metrics.ticket_key_reload("success").inc();
                metrics.ticket_keys_loaded.set(self.loaded() as i64);
                *self.last_failure.write().expect("ticket keys lock") = None;
                tracing::info!(keys = self.loaded(), "session-ticket keys reloaded");
                true
            }
            Ok(false) => false,
            Err(why) => {
                let mut slot = self.last_failure.write().expect("ticket keys lock");
                if slot.as_deref() != Some(why.as_str()) {
                    tracing::error!(path = %self.path.display(), %why,
                        "session-ticket keys refused; the keys loaded before keep working");
                    metrics.ticket_key_reload("refused").inc();
                    *slot = Some(why);
                }
                false
            }
        }
    }

    /// `Ok(true)`: new keys swapped in; `Ok(false)`: the file did not change.
    fn read_and_swap(&self) -> Result<bool, String> {
        let text = std::fs::read(&self.path).map_err(|e| format!("cannot read: {e}"))?;
        let mut last = self.last_file.lock().expect("ticket keys lock");
        if last.as_deref() == Some(text.as_slice()) {
            return Ok(false);
        }
        *last = Some(text.clone());
        let parsed = TicketKeys::parse(&text)?;
        let mut keys = Vec::with_capacity(parsed.keys.len());
        for key in &parsed.keys {
            let bytes = key.bytes()?;
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes.secret)
                .map_err(|_| "AES-256-GCM refused a key".to_string())?;
            keys.push(Key {
                name: bytes.name,
                aead: LessSafeKey::new(unbound),
                encrypt_from: key.encrypt_from,
                encrypt_until: key.encrypt_until,
                decrypt_until: key.decrypt_until,
            });
        }
        *self.keys.write().expect("ticket keys lock") = Arc::new(keys);
        Ok(true)
    }

    fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().expect("ticket keys lock").clone()
    }

    /// Seals `plain` for the certificate `binding` with the key that encrypts at `now`.
    fn seal(&self, plain: &[u8], binding: &[u8], now: i64) -> Option<(Vec<u8>, i64)> {
        let keys = self.keys();
        let key = keys
            .iter()
            .filter(|k| k.encrypt_from <= now && now < k.encrypt_until)
            .max_by_key(|k| k.encrypt_from)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&key.name, binding)),
                &mut body,
            )
            .ok()?;
        ticket.extend_from_slice(&body);
        Some((
            ticket,
            (key.decrypt_until - now).clamp(0, MAX_LIFETIME_SECONDS),
        ))
    }

    /// Opens a ticket sealed by any key of this cluster that still decrypts at `now`, for the
    /// same certificate. Anything else (another cluster's key, a retired key past its
    /// overlap, another certificate, garbage) is `None`: the agent gets a full handshake.
    fn open(&self, ticket: &[u8], binding: &[u8], now: i64) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys();
        let key = keys
            .iter()
            .find(|k| k.name[..] == *name && now < k.decrypt_until)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(aad(&key.name, binding)), &mut body)
            .ok()?;
        let len = plain.len();
        body.truncate(len);
        Some(body)
    }
}

fn aad(name: &[u8], binding: &[u8]) -> Vec<u8> {
    [name, binding].concat()
}

/// What rustls calls for one served certificate: the cluster's key ring, bound to that
/// certificate's SHA-256.
#[derive(Debug)]
pub(crate) struct Ticketer {
    ring: Arc<TicketKeyRing>,
    binding: Vec<u8>,
}

impl Ticketer {
    pub(crate) fn new(ring: Arc<TicketKeyRing>, certificate_sha256: &str) -> Self {
        Self {
            ring,
            binding: certificate_sha256.as_bytes().to_vec(),
        }
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        // Called right after `encrypt`: the key that just sealed is the one encrypting now.
        let now = clock::unix_now();
        let keys = self.ring.keys();
        keys.iter()
            .filter(|k| k.encrypt_from <= now && now < k.encrypt_until)
            .max_by_key(|k| k.encrypt_from)
            .map(|k| (k.decrypt_until - now).clamp(0, MAX_LIFETIME_SECONDS) as u32)
            .unwrap_or(0)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.ring
            .seal(plain, &self.binding, clock::unix_now())
            .map(|(ticket, _)| ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.ring.open(cipher, &self.binding, clock::unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_contract::ticket_keys::{KeyBytes, SECRET_LEN};

    const HOUR: i64 = 3600;

    fn file(dir: &Path, seed: u8, at: i64) -> PathBuf {
        let mut n = seed;
        let keys = TicketKeys::rotate(None, at, HOUR, || {
            n += 1;
            KeyBytes {
                name: [n; NAME_LEN],
                secret: [n; SECRET_LEN],
            }
        })
        .unwrap();
        let path = dir.join(format!("keys-{seed}.json"));
        std::fs::write(&path, keys.to_json()).unwrap();
        path
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ballast-tickets-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_ticket_opens_with_the_same_keys_and_certificate_only() {
        let dir = scratch("same");
        let ring = TicketKeyRing::load(file(&dir, 0, 0));
        let other_cluster = TicketKeyRing::load(file(&dir, 100, 0));
        let (ticket, lifetime) = ring.seal(b"session", b"cert-a", 10).unwrap();
        assert_eq!(lifetime, 2 * HOUR - 10);
        assert_eq!(ring.open(&ticket, b"cert-a", 20).unwrap(), b"session");
        assert!(
            ring.open(&ticket, b"cert-b", 20).is_none(),
            "another certificate"
        );
        assert!(
            other_cluster.open(&ticket, b"cert-a", 20).is_none(),
            "another cluster"
        );
        let mut flipped = ticket.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(ring.open(&flipped, b"cert-a", 20).is_none(), "tampered");
        assert!(
            ring.open(&ticket[..20], b"cert-a", 20).is_none(),
            "truncated"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_retired_key_opens_tickets_during_the_overlap_and_not_after() {
        let dir = scratch("overlap");
        let ring = TicketKeyRing::load(file(&dir, 0, 0));
        let (old, _) = ring.seal(b"s", b"c", HOUR - 1).unwrap();
        // After the handover the next key seals; the retired one still opens its tickets.
        let (new, _) = ring.seal(b"s", b"c", HOUR).unwrap();
        assert_ne!(old[..NAME_LEN], new[..NAME_LEN]);
        assert!(ring.open(&old, b"c", 2 * HOUR - 1).is_some());
        assert!(ring.open(&old, b"c", 2 * HOUR).is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_file_is_refused_and_the_old_keys_keep_working() {
        let dir = scratch("bad");
        let path = file(&dir, 0, clock::unix_now());
        let ring = TicketKeyRing::load(path.clone());
        let metrics = Metrics::new();
        let (ticket, _) = ring.seal(b"s", b"c", clock::unix_now()).unwrap();
        std::fs::write(&path, b"{\"version\":1,\"keys\":[{\"name\":\"zz\"}]}").unwrap();
        assert!(!ring.reload_if_changed(&metrics));
        assert!(ring.last_failure().is_some());
        assert_eq!(ring.loaded(), 2);
        assert!(ring.open(&ticket, b"c", clock::unix_now()).is_some());
        // A good file again is taken, and the failure cleared.
        assert_eq!(file(&dir, 0, clock::unix_now()), path);
        assert!(ring.reload_if_changed(&metrics));
        assert!(ring.last_failure().is_none());
        assert!(!format!("{ring:?}").contains(&"01".repeat(SECRET_LEN)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
