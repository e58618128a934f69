//! Where tokens are kept: in memory, or in encrypted files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
///
/// # Refreshes are serialized through the store
///
/// A rotating refresh token is single use: two processes (a scheduled run
/// and a manual one, two replicas) that refresh the same connection at once
/// both send it, one wins, and the other is refused. So every refresh runs
/// under a *lease* of the connection's key, taken with [`TokenStore::lock`]
/// and held until the new tokens are saved:
///
/// 1. take the lease (waiting, boundedly, for another holder);
/// 2. `load` again: another process may have refreshed while this one
///    waited, and its tokens are adopted instead of spending the old
///    refresh token;
/// 3. only then send the refresh token, `save` the answer, drop the lease.
///
/// A lease (rather than a compare-and-swap on `save`) is what keeps the
/// provider from ever seeing the same single-use refresh token twice: a
/// compare-and-swap detects the conflict only after both requests were
/// sent, when the loser's token is already spent. What an implementation
/// must guarantee:
///
/// - at most one live [`TokenLease`] per key across every process that
///   shares the store, and a `load` under the lease sees every `save` made
///   under an earlier one;
/// - a lease whose holder dies is released (an OS file lock, a database
///   session lock) or expires (a lease with a deadline), so a crash never
///   locks a connection out for good;
/// - waiting is bounded: after a timeout `lock` fails with a clear error
///   rather than hanging a sync.
///
/// How the stores do it: [`MemoryTokenStore`] with an in-process mutex per
/// key; [`EncryptedFileTokenStore`] with an OS advisory lock (`flock`,
/// `LockFileEx`) on a lock file beside the token file, released by the OS
/// when the process dies. A **Postgres** store takes
/// `pg_advisory_lock(hashtext(key))` (or `SELECT … FOR UPDATE` on the key's
/// row inside a transaction) on a connection the lease keeps checked out
/// until it is dropped; the server releases it when the session ends. It
/// should also keep a `version` column and write `UPDATE … WHERE version =
/// $read` so a writer without the lease cannot overwrite a newer set
/// unnoticed. A **Secret Manager** store (no locks) keeps a lease object
/// (a secret or label holding an owner id and a deadline) created or taken
/// over with an etag-conditioned write (create-if-absent, or replace only
/// an expired lease at the etag read), with a deadline longer than a
/// refresh takes; its `save` writes the new secret version conditioned on
/// the etag read under the lease.
#[async_trait]
pub trait TokenStore: Send + Sync + std::fmt::Debug {
    /// The tokens stored under `key`.
    async fn load(&self, key: &str) -> Result<Option<TokenSet>>;
    /// Takes the refresh lease of `key`: held (across processes sharing the
    /// store) until the returned guard is dropped. Not reentrant: a second
    /// `lock` of the same key waits for the first guard, even in the same
    /// task. See the trait's docs for what an implementation must
    /// guarantee.
    async fn lock(&self, key: &str) -> Result<TokenLease>;
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
    ///
    /// Done under the key's lease, onto what the store holds then (so do
    /// not call it while holding that lease: leases are not reentrant).
    async fn mark_reauthorization_needed(&self, key: &str, reason: &str) -> Result<()> {
        let _lease = self.lock(key).await?;
        let mut tokens = self.load(key).await?.unwrap_or_default();
        tokens.reauthorization = Some(super::Reauthorization::now(reason));
        self.save(key, &tokens).await
    }
}

/// The refresh lease of one key, from [`TokenStore::lock`]: released when
/// dropped.
#[must_use = "the lease is released as soon as it is dropped"]
pub struct TokenLease {
    key: String,
    _held: Box<dyn Send + Sync>,
}

impl TokenLease {
    /// A lease on `key` held as long as `held` lives: whatever releases it
    /// (a lock guard, an open locked file, a connection) is dropped with
    /// the lease. For [`TokenStore`] implementations.
    pub fn new(key: impl Into<String>, held: impl Send + Sync + 'static) -> Self {
        TokenLease {
            key: key.into(),
            _held: Box::new(held),
        }
    }

    /// The key this lease holds.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Debug for TokenLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenLease")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Tokens in memory (tests, short-lived jobs).
#[derive(Default)]
pub struct MemoryTokenStore {
    map: Mutex<HashMap<String, TokenSet>>,
    leases: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
    async fn lock(&self, key: &str) -> Result<TokenLease> {
        let mutex = self
            .leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .clone();
        Ok(TokenLease::new(key, mutex.lock_owned().await))
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

    /// The key kept in the file at `path`: read if it exists, else a new
    /// random key written there (base64, mode 0600 on Unix, created
    /// atomically so two processes starting at once agree on one key).
    /// Returns the key and whether it was created now.
    ///
    /// On Unix a key file that others can read or write (any of mode
    /// `0o077`) is refused: the key decrypts every token in the store.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<(Self, bool)> {
        let path = path.as_ref();
        if let Some(key) = Self::read_key_file(path)? {
            return Ok((key, false));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::state(format!("cannot create {}", dir.display()), e))?;
        let key = Self::generate();
        // A temporary file is created with mode 0600; linked into place
        // only if no key file appeared meanwhile.
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| Error::state(format!("cannot create a file in {}", dir.display()), e))?;
        let written =
            std::io::Write::write_all(&mut tmp, format!("{}\n", key.to_base64()).as_bytes())
                .and_then(|()| tmp.as_file().sync_all());
        written.map_err(|e| Error::state(format!("cannot write {}", path.display()), e))?;
        match tmp.persist_noclobber(path) {
            Ok(_) => {
                if let Ok(d) = std::fs::File::open(&dir) {
                    let _ = d.sync_all();
                }
                Ok((key, true))
            }
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                let key = Self::read_key_file(path)?.ok_or_else(|| Error::State {
                    message: format!("the key file {} vanished", path.display()),
                    source: None,
                })?;
                Ok((key, false))
            }
            Err(e) => Err(Error::state(
                format!("cannot create {}", path.display()),
                e.error,
            )),
        }
    }

    fn read_key_file(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::state(format!("cannot read {}", path.display()), e)),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path)
                .map_err(|e| Error::state(format!("cannot read {}", path.display()), e))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::Config(format!(
                    "the key file {} has mode {mode:o}: others may read it; `chmod 600` it",
                    path.display()
                )));
            }
        }
        Self::from_base64(&text)
            .map(Some)
            .map_err(|e| Error::Config(format!("the key file {}: {e}", path.display())))
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
/// - The refresh lease of a key ([`TokenStore::lock`]) is an OS advisory
///   lock on `<key>.lock` beside the token file, so processes sharing the
///   directory (on one machine, or a file system with working `flock`)
///   refresh one at a time; the OS releases it when its holder dies.
#[derive(Debug)]
pub struct EncryptedFileTokenStore {
    dir: PathBuf,
    key: EncryptionKey,
    lock_timeout: Duration,
}

/// How long [`EncryptedFileTokenStore`] waits for another process's lease
/// by default: longer than a refresh with its retries takes.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

impl EncryptedFileTokenStore {
    /// A store in `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>, key: EncryptionKey) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::state(format!("cannot create {}", dir.display()), e))?;
        Ok(EncryptedFileTokenStore {
            dir,
            key,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// How long [`TokenStore::lock`] waits for another holder of the lease
    /// before failing (default 2 minutes).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{}.tokens", URL_SAFE_NO_PAD.encode(key)))
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{}.lock", URL_SAFE_NO_PAD.encode(key)))
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

    async fn lock(&self, key: &str) -> Result<TokenLease> {
        let (path, timeout) = (self.lock_path(key), self.lock_timeout);
        let file = tokio::task::spawn_blocking(move || lock_file(&path, timeout))
            .await
            .map_err(|e| Error::state("token lock task failed", e))?
            .map_err(|e| match e {
                LockError::Timeout => Error::State {
                    message: format!(
                        "the tokens of `{key}` are being refreshed by another process \
                         that has held their lock for more than {} s",
                        timeout.as_secs_f64()
                    ),
                    source: None,
                },
                LockError::Io(e) => Error::state(format!("cannot lock the tokens of `{key}`"), e),
            })?;
        Ok(TokenLease::new(key, file))
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

enum LockError {
    Timeout,
    Io(std::io::Error),
}

/// Opens `path` (created with mode 0600) and takes an exclusive advisory
/// lock on it, polling until `timeout`. Blocking: run off the runtime. The
/// lock lives as long as the returned file is open.
fn lock_file(path: &Path, timeout: Duration) -> std::result::Result<std::fs::File, LockError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(LockError::Io)?;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => return Ok(file),
            Err(fs4::TryLockError::WouldBlock) => {}
            Err(fs4::TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(LockError::Timeout);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
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
    async fn a_lease_is_exclusive_bounded_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EncryptedFileTokenStore::open(dir.path(), EncryptionKey::generate())
            .expect("open")
            .with_lock_timeout(Duration::from_millis(100));
        // A second handle on the same directory (as another process would
        // open it): its own file descriptions, so `flock` excludes it.
        let other = EncryptedFileTokenStore::open(dir.path(), EncryptionKey::generate())
            .expect("open")
            .with_lock_timeout(Duration::from_millis(100));
        let lease = store.lock("hubspot/acme").await.expect("lock");
        assert_eq!(lease.key(), "hubspot/acme");
        let err = other.lock("hubspot/acme").await.expect_err("held");
        assert!(err.to_string().contains("another process"), "{err}");
        // Other keys are independent.
        let _b = other.lock("hubspot/b").await.expect("other key");
        drop(lease);
        let _again = other.lock("hubspot/acme").await.expect("released");
        // No lock file is taken for a token file.
        assert_eq!(store.keys().await.expect("keys"), Vec::<String>::new());

        let mem = Arc::new(MemoryTokenStore::new());
        let held = mem.lock("k").await.expect("lock");
        let waiting = {
            let mem = mem.clone();
            tokio::spawn(async move { mem.lock("k").await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the second lease waits");
        drop(held);
        waiting.await.expect("join").expect("then gets it");
    }

    #[test]
    fn a_key_file_is_created_once_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("encryption.key");
        let (key, created) = EncryptionKey::load_or_create(&path).expect("create");
        assert!(created);
        let (again, created) = EncryptionKey::load_or_create(&path).expect("reuse");
        assert!(!created);
        assert_eq!(key.to_base64(), again.to_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            let err = EncryptionKey::load_or_create(&path).expect_err("too open");
            assert!(err.to_string().contains("chmod 600"), "{err}");
            assert!(!err.to_string().contains(&key.to_base64()), "{err}");
        }
        std::fs::write(dir.path().join("bad.key"), "not a key").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                dir.path().join("bad.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod");
        }
        assert!(EncryptionKey::load_or_create(dir.path().join("bad.key")).is_err());
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
