//! Refreshes of one connection from two OS processes sharing one encrypted
//! file token store, against a provider whose refresh tokens are single
//! use (the Constant Contact fake): no refresh token is ever lost, no
//! connection is falsely marked "re-authorize", the provider never sees a
//! spent refresh token.
//!
//! The test binary runs itself twice as the racing processes: the child
//! role is the `race_child` test, selected by `HEADWATER_RACE_CHILD`.

use std::sync::Arc;
use std::time::Duration;

use headwater::auth::{
    AccessTokenSource, EncryptedFileTokenStore, EncryptionKey, OAuthClient, TokenProvider,
    TokenSet, TokenStore,
};
use headwater::constant_contact::oauth_config;
use headwater::testkit::constant_contact::{ConstantContactFake, FakeConfig};
use secrecy::ExposeSecret;

const CHILD: &str = "HEADWATER_RACE_CHILD";
const KEY: &str = "constant_contact/race";
const PROCESSES: usize = 2;
const REFRESHES_PER_PROCESS: usize = 50;

/// One racing process: `REFRESHES_PER_PROCESS` refreshes through its own
/// provider (the margin is longer than the token's lifetime, so every
/// `access_token` call refreshes), printing a line per outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_child() {
    let Ok(dir) = std::env::var(CHILD) else {
        return; // not a child: nothing to do
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let store: Arc<dyn TokenStore> = Arc::new(
        EncryptedFileTokenStore::open(
            &dir,
            EncryptionKey::from_base64(&var("RACE_KEY")).expect("key"),
        )
        .expect("store"),
    );
    let oauth = OAuthClient::new(
        oauth_config(var("RACE_CLIENT_ID"), var("RACE_CLIENT_SECRET").into())
            .with_token_url(&var("RACE_TOKEN_URL"))
            .expect("url"),
    )
    .expect("oauth");
    let provider = TokenProvider::new(oauth, store, KEY, None)
        .await
        .expect("provider")
        .with_margin(Duration::from_secs(48 * 3600));
    // Start together: the parent creates `go` once every child is up.
    let go = std::path::Path::new(&dir).join("go");
    while !go.exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..REFRESHES_PER_PROCESS {
        match provider.access_token().await {
            Ok(t) => assert!(!t.expose_secret().is_empty()),
            Err(e) => println!("RACE-ERROR {e}"),
        }
    }
    println!("RACE-DONE refreshes={}", provider.refresh_count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_racing_refreshes_lose_no_token_and_mark_nothing() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let fake = ConstantContactFake::start(FakeConfig {
        rotate_refresh_tokens: true,
        ..FakeConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = EncryptionKey::generate();
    let store = EncryptedFileTokenStore::open(
        dir.path(),
        EncryptionKey::from_base64(&key.to_base64()).expect("key"),
    )
    .expect("store");
    let (_, refresh) = fake.mint_tokens();
    store
        .save(KEY, &TokenSet::from_refresh_token(refresh.into()))
        .await
        .expect("seed");

    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["race_child", "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, dir.path())
                .env("RACE_KEY", key.to_base64())
                .env("RACE_CLIENT_ID", &fake.config().client_id)
                .env("RACE_CLIENT_SECRET", &fake.config().client_secret)
                .env("RACE_TOKEN_URL", fake.token_url())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn a racing process")
        })
        .collect();
    // Let both load their binary, then start them at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(dir.path().join("go"), b"").expect("go");
    let mut errors = Vec::new();
    let mut done = 0;
    let mut outputs = String::new();
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("join")
            .expect("child output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        errors.extend(
            stdout
                .lines()
                .filter_map(|l| l.find("RACE-ERROR").map(|at| l[at..].to_owned())),
        );
        outputs.push_str(&stdout);
        done += stdout.lines().filter(|l| l.contains("RACE-DONE")).count();
    }
    assert_eq!(done, PROCESSES, "every child ran its refreshes: {outputs}");

    let stats = fake.stats();
    let stored = store.load(KEY).await.expect("load").expect("tokens");
    let final_refresh = stored
        .refresh_token
        .as_ref()
        .map(|r| r.expose_secret().to_owned())
        .unwrap_or_default();
    assert!(
        errors.is_empty(),
        "{} of {} refreshes failed, e.g. {:?}",
        errors.len(),
        PROCESSES * REFRESHES_PER_PROCESS,
        errors.first()
    );
    assert_eq!(
        stats.invalid_grants, 0,
        "the provider saw a spent refresh token"
    );
    assert!(
        !stored.needs_reauthorization(),
        "false re-authorization mark: {:?}",
        stored.reauthorization
    );
    assert!(
        fake.refresh_token_valid(&final_refresh),
        "the stored refresh token is no longer accepted: a rotated token was lost"
    );
    assert_eq!(
        stats.token_refreshes,
        (PROCESSES * REFRESHES_PER_PROCESS) as u64,
        "every call refreshed exactly once"
    );
}
