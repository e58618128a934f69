//! Where tokens are kept: in memory, or in encrypted files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretBox};

use super::{StoredTokens, TokenSet};
use crate::fsutil::write_atomically;
use crate::{Error, Result};

/// Keeps the tokens of connected accounts, by key (e.g. `hubspot/acme`).
///
/// [`super::TokenProvider`] saves every refreshed set here before using it.
#[async_trait]
pub trait TokenStore: Send + Sync + std::fmt::Debug {
    /// The tokens stored under `key`.
    async fn load(&self, key: &str) -> Result<Option<TokenSet>>;
    /// Replaces the tokens under `key`, durably, before returning.
    async fn save(&self, key: &str, tokens: &TokenSet) -> Result<()>;
    /// Removes `key` (disconnect).
    async fn delete(&self, key: &str) -> Result<()>;
    /// Every stored key, sorted.
    async fn keys(&self) -> Result<Vec<String>>;

    /// Marks the connection under `key` as needing authorization again
    /// (see [`super::TokenSet::reauthorization`]), keeping its tokens for
    /// the record. [`super::TokenProvider`] does this itself when a refresh
    /// is refused; call it for connections without refresh (a revoked
    /// Mailchimp token). Connecting the account again saves a fresh set.
    async fn mark_reauthorization_needed(&self, key: &str, reason: &str) -> Result<()> {
        let mut tokens = self.load(key).await?.unwrap_or_default();
        tokens.reauthorization = Some(super::Reauthorization::now(reason));
        self.save(key, &tokens).await
    }
}

/// Tokens in memory (tests, short-lived jobs).
#[derive(Default)]
pub struct MemoryTokenStore {
    map: Mutex<HashMap<String, TokenSet>>,
    saves: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTokenStore").finish_non_exhaustive()
    }
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times `save` was called.
    pub fn save_count(&self) -> u64 {
        self.saves.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, TokenSet>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn load(&self, key: &str) -> Result<Option<TokenSet>> {
        Ok(self.map().get(key).cloned())
    }
    async fn save(&self, key: &str, tokens: &TokenSet) -> Result<()> {
        self.saves
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.map().insert(key.to_owned(), tokens.clone());
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.map().remove(key);
        Ok(())
    }
    async fn keys(&self) -> Result<Vec<String>> {
        let mut keys: Vec<_> = self.map().keys().cloned().collect();
        keys.sort();
        Ok(keys)
    }
}

/// A 256-bit key for [`EncryptedFileTokenStore`]. Never printed.
pub struct EncryptionKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey([REDACTED])")
    }
}

impl EncryptionKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EncryptionKey(SecretBox::new(Box::new(bytes)))
    }

    /// A key from standard base64 of 32 bytes (e.g. `openssl rand -base64 32`).
    pub fn from_base64(s: &str) -> Result<Self> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|e| Error::Config(format!("encryption key is not base64: {e}")))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|v: Vec<u8>| {
            Error::Config(format!("encryption key must be 32 bytes, got {}", v.len()))
        })?;
        Ok(Self::from_bytes(arr))
    }

    /// A new random key.
    pub fn generate() -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut arr = [0u8; 32];
        arr.copy_from_slice(&key);
        Self::from_bytes(arr)
    }

    /// The key as standard base64, to store it somewhere safe.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.expose_secret())
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.expose_secret().into())
    }
}

const MAGIC: &[u8; 4] = b"HWT1";
const NONCE_LEN: usize = 24;

/// Tokens in files, one per key, encrypted with XChaCha20-Poly1305 under a
/// key the user supplies.
///
/// - Each file is `HWT1 | 24-byte random nonce | ciphertext+tag`; the store
///   key is the associated data, so a file copied under another key's name
///   does not decrypt.
/// - Writes are atomic: a temporary file in the same directory, `fsync`,
///   rename over the old file, `fsync` of the directory. A crash leaves
///   either the old or the new tokens, never a torn file.
/// - Files are created with mode 0600.
#[derive(Debug)]
pub struct EncryptedFileTokenStore {
    dir: PathBuf,
    key: EncryptionKey,
}

impl EncryptedFileTokenStore {
    /// A store in `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>, key: EncryptionKey) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::state(format!("cannot create {}", dir.display()), e))?;
        Ok(EncryptedFileTokenStore { dir, key })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{}.tokens", URL_SAFE_NO_PAD.encode(key)))
    }

    fn encrypt(&self, key: &str, tokens: &TokenSet) -> Result<Vec<u8>> {
        let plain = serde_json::to_vec(&tokens.to_stored())
            .map_err(|e| Error::state("cannot encode tokens", e))?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .key
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| Error::State {
                message: "encryption failed".into(),
                source: None,
            })?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ct.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn decrypt(&self, key: &str, bytes: &[u8]) -> Result<TokenSet> {
        let bad = |what: &str| Error::State {
            message: format!("token file for `{key}` {what}"),
            source: None,
        };
        if bytes.len() < MAGIC.len() + NONCE_LEN || &bytes[..4] != MAGIC {
            return Err(bad("is not a headwater token file"));
        }
        let nonce = XNonce::from_slice(&bytes[4..4 + NONCE_LEN]);
        let plain = self
            .key
            .cipher()
            .decrypt(
                nonce,
                Payload {
                    msg: &bytes[4 + NONCE_LEN..],
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| bad("does not decrypt: wrong key, or the file was altered"))?;
        let stored: StoredTokens = serde_json::from_slice(&plain)
            .map_err(|e| Error::state(format!("token file for `{key}` is corrupt"), e))?;
        Ok(TokenSet::from_stored(stored))
    }
}

#[async_trait]
impl TokenStore for EncryptedFileTokenStore {
    async fn load(&self, key: &str) -> Result<Option<TokenSet>> {
        match tokio::fs::read(self.path(key)).await {
            Ok(bytes) => self.decrypt(key, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::state(format!("cannot read tokens for `{key}`"), e)),
        }
    }

    async fn save(&self, key: &str, tokens: &TokenSet) -> Result<()> {
        let bytes = self.encrypt(key, tokens)?;
        let (dir, path) = (self.dir.clone(), self.path(key));
        tokio::task::spawn_blocking(move || write_atomically(&dir, &path, &bytes))
            .await
            .map_err(|e| Error::state("token write task failed", e))?
            .map_err(|e| Error::state(format!("cannot write tokens for `{key}`"), e))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::state(format!("cannot delete tokens for `{key}`"), e)),
        }
    }

    async fn keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.dir)
            .await
            .map_err(|e| Error::state("cannot list the token directory", e))?;
        while let Some(entry) = dir
            .next_entry()
            .await
            .map_err(|e| Error::state("cannot list the token directory", e))?
        {
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".tokens")) else {
                continue;
            };
            if let Some(key) = URL_SAFE_NO_PAD
                .decode(stem)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
            {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::time::Duration;

    fn tokens(a: &str, r: &str) -> TokenSet {
        TokenSet::new(a.into(), Some(r.into()), Some(Duration::from_secs(1800)))
    }

    #[tokio::test]
    async fn round_trip_and_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = EncryptionKey::generate();
        let store = EncryptedFileTokenStore::open(
            dir.path(),
            EncryptionKey::from_base64(&key.to_base64()).expect("key"),
        )
        .expect("open");
        assert!(store.load("hubspot/acme").await.expect("load").is_none());
        store
            .save("hubspot/acme", &tokens("a1", "r1"))
            .await
            .expect("save");
        store
            .save("hubspot/acme", &tokens("a2", "r2"))
            .await
            .expect("save");
        store
            .save("mailchimp/b c", &tokens("x", "y"))
            .await
            .expect("save");
        let got = store
            .load("hubspot/acme")
            .await
            .expect("load")
            .expect("some");
        assert_eq!(
            got.refresh_token
                .as_ref()
                .map(|s| s.expose_secret().to_owned())
                .as_deref(),
            Some("r2")
        );
        assert_eq!(
            store.keys().await.expect("keys"),
            vec!["hubspot/acme", "mailchimp/b c"]
        );
        // Nothing readable on disk.
        for entry in std::fs::read_dir(dir.path()).expect("dir") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            assert!(!bytes.windows(2).any(|w| w == b"r2"));
        }
        store.delete("hubspot/acme").await.expect("delete");
        assert!(store.load("hubspot/acme").await.expect("load").is_none());
    }

    #[tokio::test]
    async fn wrong_key_tampering_and_swapped_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            EncryptedFileTokenStore::open(dir.path(), EncryptionKey::generate()).expect("open");
        store.save("a", &tokens("a1", "r1")).await.expect("save");
        store.save("b", &tokens("b1", "rb")).await.expect("save");
        let other =
            EncryptedFileTokenStore::open(dir.path(), EncryptionKey::generate()).expect("open");
        assert!(matches!(other.load("a").await, Err(Error::State { .. })));
        // A file moved under another key's name does not decrypt (AAD).
        std::fs::copy(store.path("a"), store.path("b")).expect("copy");
        assert!(matches!(store.load("b").await, Err(Error::State { .. })));
        // A flipped bit is detected.
        let mut bytes = std::fs::read(store.path("a")).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(store.path("a"), bytes).expect("write");
        assert!(matches!(store.load("a").await, Err(Error::State { .. })));
        assert!(EncryptionKey::from_base64("c2hvcnQ=").is_err());
        assert!(!format!("{store:?}").contains(&EncryptionKey::generate().to_base64()));
    }
}
