//! The secret audit: every example in `examples/` runs against the
//! provider fakes with recognisable secrets (client secrets, API keys,
//! private-app and OAuth tokens, the token-store key, the S3 secret key),
//! with `RUST_LOG=trace`, normally and in failure modes (connections
//! dropped on the token and token-information calls, a 429 with a huge
//! `Retry-After`); then all of its stdout, its stderr and every file it
//! wrote are searched for each secret and for every token the fakes issued.
//! A finding names the run, the place (stdout, stderr or the file) and the
//! line.
//!
//! The examples run as the built binaries next to this test's
//! (`target/<profile>/examples/`); `cargo test --all-features` builds them
//! before running tests. Run alone, build them first:
//! `cargo build --all-features --examples`.
//!
//! The warehouse servers are those of `scripts/test-services.sh`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use headwater::auth::{EncryptedFileTokenStore, EncryptionKey, TokenSet, TokenStore};
use headwater::testkit::constant_contact::{self as cc_fake, ConstantContactFake};
use headwater::testkit::hostile::Hostility;
use headwater::testkit::hubspot::{FakeConfig, HubSpotFake, ObjectSeed};
use headwater::testkit::mailchimp::{AudienceSeed, MailchimpFake, MailchimpFakeConfig};
use uuid::Uuid;

const PG_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/test";
const S3_ENDPOINT: &str = "http://127.0.0.1:5000";
const BQ_ENDPOINT: &str = "http://127.0.0.1:9050";
const BQ_PROJECT: &str = "test-project";
const RUN_LIMIT: Duration = Duration::from_secs(180);

const HS_PAT: &str = "SECRET-hw-audit-hubspot-private-app-token";
const HS_CLIENT_SECRET: &str = "SECRET-hw-audit-hubspot-client-secret";
const MC_KEY: &str = "SECRET-hw-audit-mailchimp-api-key-us6";
const MC_TOKEN: &str = "SECRET-hw-audit-mailchimp-oauth-token";
const CC_CLIENT_SECRET: &str = "SECRET-hw-audit-cc-client-secret";
const AWS_SECRET: &str = "SECRET-hw-audit-aws-secret-access-key";
/// 32 bytes, the size of a token-store key.
const TOKEN_KEY_RAW: &[u8; 32] = b"SECRET-hw-audit-token-key-32byte";

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "the example binary {} is missing: run `cargo build --all-features --examples` \
         (`cargo test --all-features` builds them)",
        path.display()
    );
    path
}

/// One run of an example.
struct Run {
    label: String,
    example: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// Working directory: its token store and the files it writes.
    dir: PathBuf,
    /// Whether the run must exit 0 (a run that fails for the wrong reason
    /// would audit nothing).
    must_succeed: bool,
    hostility: Option<Hostility>,
}

struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<i32>,
}

async fn execute(run: &Run) -> Output {
    let mut cmd = tokio::process::Command::new(example(run.example));
    cmd.args(&run.args)
        .current_dir(&run.dir)
        .env_clear()
        .env("RUST_LOG", "trace")
        .env("RUST_BACKTRACE", "1")
        .env("HOME", &run.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in &run.env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn example");
    match tokio::time::timeout(RUN_LIMIT, child.wait_with_output()).await {
        Ok(Ok(out)) => Output {
            stdout: out.stdout,
            stderr: out.stderr,
            status: out.status.code(),
        },
        Ok(Err(e)) => panic!("{}: {e}", run.label),
        Err(_) => Output {
            stdout: Vec::new(),
            stderr: format!("(killed after {RUN_LIMIT:?})").into_bytes(),
            status: None,
        },
    }
}

/// Where `needle` occurs in `hay`: the line number and the text around
/// it, without colour codes and with the secret masked (so the report does
/// not repeat it).
fn find(hay: &[u8], needle: &str) -> Option<(usize, String)> {
    let n = needle.as_bytes();
    let at = hay.windows(n.len()).position(|w| w == n)?;
    let line_no = hay[..at].iter().filter(|b| **b == b'\n').count() + 1;
    let start = hay[..at]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let end = hay[at..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(hay.len(), |p| at + p);
    let line = String::from_utf8_lossy(&hay[start..end]).replace(needle, "<SECRET>");
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI colour code: ESC [ … m.
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let pos = plain.find("<SECRET>").unwrap_or(0);
    let from = plain[..pos]
        .char_indices()
        .rev()
        .nth(200)
        .map_or(0, |(i, _)| i);
    let text: String = plain[from..].chars().take(300).collect();
    Some((line_no, text))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every place a secret appears in a run's output and files.
fn audit(run: &Run, out: &Output, secrets: &[String]) -> Vec<String> {
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("stdout".into(), out.stdout.clone()),
        ("stderr".into(), out.stderr.clone()),
    ];
    let mut files = Vec::new();
    files_under(&run.dir, &mut files);
    for f in files {
        if let Ok(bytes) = std::fs::read(&f) {
            let rel = f.strip_prefix(&run.dir).unwrap_or(&f);
            places.push((format!("file {}", rel.display()), bytes));
        }
    }
    let mut findings = Vec::new();
    for secret in secrets {
        for (place, bytes) in &places {
            if let Some((line, text)) = find(bytes, secret) {
                findings.push(format!(
                    "{}: secret {}… in {place}, line {line}: {text}",
                    run.label,
                    &secret[..secret.len().min(12)]
                ));
            }
        }
    }
    findings
}

async fn http_ok(method: reqwest::Method, url: &str) -> bool {
    reqwest::Client::new()
        .request(method, url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_never_print_or_write_a_secret() {
    let id = Uuid::new_v4().simple().to_string()[..10].to_owned();
    let root = tempfile::tempdir().expect("tempdir");
    let token_key = base64::engine::general_purpose::STANDARD.encode(TOKEN_KEY_RAW);

    let mut hs_config = FakeConfig {
        client_secret: HS_CLIENT_SECRET.into(),
        private_app_tokens: vec![HS_PAT.into()],
        ..FakeConfig::default()
    };
    hs_config.objects.clear();
    hs_config
        .objects
        .insert("contacts".into(), ObjectSeed::new(120, 2));
    let hs = HubSpotFake::start(hs_config).await;
    let mc = MailchimpFake::start(MailchimpFakeConfig {
        audiences: vec![AudienceSeed::new(80)],
        api_keys: vec![MC_KEY.into()],
        access_tokens: vec![MC_TOKEN.into()],
        ..MailchimpFakeConfig::default()
    })
    .await;
    let cc = ConstantContactFake::start(cc_fake::FakeConfig {
        contacts: 120,
        client_secret: CC_CLIENT_SECRET.into(),
        rate_limit: None,
        ..cc_fake::FakeConfig::default()
    })
    .await;

    let (raw, clean) = (format!("hw-audit-{id}-raw"), format!("hw-audit-{id}-clean"));
    for b in [&raw, &clean] {
        assert!(
            http_ok(reqwest::Method::PUT, &format!("{S3_ENDPOINT}/{b}")).await,
            "cannot create bucket {b} on moto at {S3_ENDPOINT}: run `bash scripts/test-services.sh`"
        );
    }

    let mut n = 0;
    let mut new_dir = || {
        n += 1;
        let d = root.path().join(format!("run-{n:02}"));
        std::fs::create_dir_all(&d).expect("run dir");
        d
    };
    let hs_client_id = hs.config().client_id;
    let streams = ["--streams".to_owned(), "contacts,owners".to_owned()];
    let mut runs = Vec::new();
    let mut schemas = Vec::new();
    let mut datasets = Vec::new();

    // The HubSpot examples: a private app; OAuth with a key (the store
    // warmed); the same store while the token-information call drops the
    // connection (the reported leak); a fresh store while the refresh drops.
    for ex in [
        "hubspot_sync",
        "hubspot_to_postgres",
        "hubspot_to_s3",
        "hubspot_to_bigquery",
    ] {
        let schema = format!("hw_audit_{id}_{}", runs.len());
        let dataset = format!("hw_audit_{id}_{}", runs.len());
        schemas.push(schema.clone());
        datasets.push(dataset.clone());
        let dest: (Vec<String>, Vec<(&'static str, String)>) = match ex {
            "hubspot_sync" => (vec!["--out".into(), "out".into()], vec![]),
            "hubspot_to_postgres" => (
                vec!["--schema".into(), schema],
                vec![("DATABASE_URL", PG_URL.into())],
            ),
            "hubspot_to_s3" => (
                vec![],
                vec![
                    ("S3_ENDPOINT", S3_ENDPOINT.into()),
                    ("S3_BUCKET", raw.clone()),
                    ("S3_CLEAN_BUCKET", clean.clone()),
                    ("AWS_ACCESS_KEY_ID", "test".into()),
                    ("AWS_SECRET_ACCESS_KEY", AWS_SECRET.into()),
                    ("AWS_REGION", "us-east-1".into()),
                ],
            ),
            _ => (
                vec![],
                vec![
                    ("BIGQUERY_PROJECT", BQ_PROJECT.into()),
                    ("BIGQUERY_DATASET", dataset),
                    ("BIGQUERY_ENDPOINT", BQ_ENDPOINT.into()),
                ],
            ),
        };
        let mut args = vec!["--quiet".to_owned()];
        args.extend(streams.iter().cloned());
        args.extend(dest.0);
        let base = vec![("HUBSPOT_BASE_URL", hs.uri())];
        let with = |extra: Vec<(&'static str, String)>| {
            let mut e = base.clone();
            e.extend(dest.1.iter().cloned());
            e.extend(extra);
            e
        };
        runs.push(Run {
            label: format!("{ex} (private app)"),
            example: ex,
            args: args.clone(),
            env: with(vec![("HUBSPOT_ACCESS_TOKEN", HS_PAT.into())]),
            dir: new_dir(),
            must_succeed: true,
            hostility: None,
        });
        let oauth = |refresh: String| {
            with(vec![
                ("HUBSPOT_CLIENT_ID", hs_client_id.clone()),
                ("HUBSPOT_CLIENT_SECRET", HS_CLIENT_SECRET.into()),
                ("HUBSPOT_REFRESH_TOKEN", refresh),
                ("HEADWATER_TOKEN_KEY", token_key.clone()),
            ])
        };
        let warm = new_dir();
        let (_, refresh) = hs.mint_tokens();
        runs.push(Run {
            label: format!("{ex} (OAuth)"),
            example: ex,
            args: args.clone(),
            env: oauth(refresh.clone()),
            dir: warm.clone(),
            must_succeed: true,
            hostility: None,
        });
        runs.push(Run {
            label: format!("{ex} (OAuth, token-info call drops the connection)"),
            example: ex,
            args: args.clone(),
            env: oauth(refresh),
            dir: warm,
            must_succeed: false,
            hostility: Some(Hostility::DroppedConnection),
        });
        let (_, refresh) = hs.mint_tokens();
        runs.push(Run {
            label: format!("{ex} (OAuth, refresh drops the connection)"),
            example: ex,
            args: args.clone(),
            env: oauth(refresh),
            dir: new_dir(),
            must_succeed: false,
            hostility: Some(Hostility::DroppedConnection),
        });
    }

    // Mailchimp into BigQuery: an API key, an OAuth token, a huge Retry-After.
    let mc_dataset = format!("hw_audit_{id}_mc");
    datasets.push(mc_dataset.clone());
    let mc_env = |auth: (&'static str, &str)| {
        vec![
            ("MAILCHIMP_BASE_URL", mc.api_base()),
            (auth.0, auth.1.to_owned()),
            ("BIGQUERY_PROJECT", BQ_PROJECT.into()),
            ("BIGQUERY_DATASET", mc_dataset.clone()),
            ("BIGQUERY_ENDPOINT", BQ_ENDPOINT.into()),
        ]
    };
    let mc_args = vec![
        "--quiet".to_owned(),
        "--streams".into(),
        "list_members,campaigns".into(),
    ];
    for (label, auth, hostility) in [
        ("API key", ("MAILCHIMP_API_KEY", MC_KEY), None),
        ("OAuth token", ("MAILCHIMP_ACCESS_TOKEN", MC_TOKEN), None),
        (
            "API key, 429 with Retry-After 1e20",
            ("MAILCHIMP_API_KEY", MC_KEY),
            Some(Hostility::HugeRetryAfter),
        ),
    ] {
        runs.push(Run {
            label: format!("mailchimp_to_bigquery ({label})"),
            example: "mailchimp_to_bigquery",
            args: mc_args.clone(),
            env: mc_env(auth),
            dir: new_dir(),
            must_succeed: hostility.is_none(),
            hostility,
        });
    }

    // Constant Contact into BigQuery: OAuth with a key, then the refresh
    // dropping the connection.
    let cc_dataset = format!("hw_audit_{id}_cc");
    datasets.push(cc_dataset.clone());
    let cc_env = |refresh: String| {
        vec![
            ("CONSTANT_CONTACT_CLIENT_ID", cc.config().client_id.clone()),
            ("CONSTANT_CONTACT_CLIENT_SECRET", CC_CLIENT_SECRET.into()),
            ("CONSTANT_CONTACT_REFRESH_TOKEN", refresh),
            ("CONSTANT_CONTACT_BASE_URL", cc.base_url()),
            ("CONSTANT_CONTACT_TOKEN_URL", cc.token_url()),
            ("HEADWATER_TOKEN_KEY", token_key.clone()),
            ("BIGQUERY_PROJECT", BQ_PROJECT.into()),
            ("BIGQUERY_DATASET", cc_dataset.clone()),
            ("BIGQUERY_ENDPOINT", BQ_ENDPOINT.into()),
        ]
    };
    for (label, hostility) in [
        ("OAuth", None),
        (
            "OAuth, refresh drops the connection",
            Some(Hostility::DroppedConnection),
        ),
    ] {
        let (_, refresh) = cc.mint_tokens();
        runs.push(Run {
            label: format!("constant_contact_to_bigquery ({label})"),
            example: "constant_contact_to_bigquery",
            args: vec!["--quiet".into()],
            env: cc_env(refresh),
            dir: new_dir(),
            must_succeed: hostility.is_none(),
            hostility,
        });
    }

    // multi_portal_sync: two portals connected in an encrypted token store.
    let mp_schema = format!("hw_audit_{id}_mp");
    schemas.push(mp_schema.clone());
    for (label, hostility) in [
        ("two OAuth portals", None),
        (
            "two OAuth portals, token calls drop the connection",
            Some(Hostility::DroppedConnection),
        ),
    ] {
        let dir = new_dir();
        let store = EncryptedFileTokenStore::open(
            dir.join("tokens"),
            EncryptionKey::from_base64(&token_key).expect("key"),
        )
        .expect("store");
        for portal in ["alpha", "beta"] {
            let (_, refresh) = hs.mint_tokens();
            store
                .save(
                    &format!("hubspot/{portal}"),
                    &TokenSet::from_refresh_token(refresh.into()),
                )
                .await
                .expect("save tokens");
        }
        runs.push(Run {
            label: format!("multi_portal_sync ({label})"),
            example: "multi_portal_sync",
            args: vec![
                "--once".into(),
                "--schema".into(),
                mp_schema.clone(),
                "--streams".into(),
                "contacts,owners".into(),
                "--token-dir".into(),
                "tokens".into(),
                "--database-url".into(),
                PG_URL.into(),
            ],
            env: vec![
                ("HUBSPOT_CLIENT_ID", hs_client_id.clone()),
                ("HUBSPOT_CLIENT_SECRET", HS_CLIENT_SECRET.into()),
                ("HUBSPOT_BASE_URL", hs.uri()),
                ("HEADWATER_TOKEN_KEY", token_key.clone()),
            ],
            dir,
            must_succeed: hostility.is_none(),
            hostility,
        });
    }

    let mut outputs = Vec::new();
    for run in &runs {
        hs.set_hostility(run.hostility);
        mc.set_hostility(run.hostility);
        cc.set_hostility(run.hostility);
        let out = execute(run).await;
        hs.set_hostility(None);
        mc.set_hostility(None);
        cc.set_hostility(None);
        outputs.push(out);
    }
    // hubspot_fake takes no secret; it runs until killed: check its first
    // line says where it listens and holds none of the secrets.
    let fake_dir = new_dir();
    let fake_run = Run {
        label: "hubspot_fake".into(),
        example: "hubspot_fake",
        args: vec!["--contacts".into(), "100".into()],
        env: vec![],
        dir: fake_dir,
        must_succeed: false,
        hostility: None,
    };
    let fake_out = {
        let mut cmd = tokio::process::Command::new(example("hubspot_fake"));
        cmd.args(&fake_run.args)
            .current_dir(&fake_run.dir)
            .env_clear()
            .env("RUST_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn hubspot_fake");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = child.start_kill();
        let out = child.wait_with_output().await.expect("hubspot_fake output");
        Output {
            stdout: out.stdout,
            stderr: out.stderr,
            status: out.status.code(),
        }
    };

    // Every secret, and every token the fakes issued during the runs.
    let mut secrets: Vec<String> = [
        HS_PAT,
        HS_CLIENT_SECRET,
        MC_KEY,
        MC_TOKEN,
        CC_CLIENT_SECRET,
        AWS_SECRET,
        token_key.as_str(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    secrets.push(String::from_utf8_lossy(TOKEN_KEY_RAW).into_owned());
    secrets.extend(hs.issued_tokens());
    secrets.extend(cc.issued_tokens());

    let mut findings = Vec::new();
    let mut table = Vec::new();
    for (run, out) in runs.iter().zip(&outputs) {
        let found = audit(run, out, &secrets);
        let exit = out
            .status
            .map_or("killed".to_owned(), |c| format!("exit {c}"));
        table.push(format!(
            "| {} | {exit} | {} |",
            run.label,
            if found.is_empty() {
                "clean".to_owned()
            } else {
                format!("{} finding(s)", found.len())
            }
        ));
        if run.must_succeed && out.status != Some(0) {
            let mut tail: String = String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.contains("TRACE") && !l.contains("DEBUG"))
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ");
            for secret in &secrets {
                tail = tail.replace(secret.as_str(), "<SECRET>");
            }
            findings.push(format!(
                "{}: must succeed to be audited, {exit}: {tail}",
                run.label
            ));
        }
        findings.extend(found);
    }
    let found = audit(&fake_run, &fake_out, &secrets);
    table.push(format!(
        "| hubspot_fake | killed after 3 s | {} |",
        if found.is_empty() {
            "clean"
        } else {
            "finding(s)"
        }
    ));
    findings.extend(found);

    // Clean up the warehouses.
    if let Ok((client, conn)) = tokio_postgres::connect(PG_URL, tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        for s in &schemas {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
                .await;
        }
    }
    for d in &datasets {
        let url = format!(
            "{BQ_ENDPOINT}/bigquery/v2/projects/{BQ_PROJECT}/datasets/{d}?deleteContents=true"
        );
        let _ = http_ok(reqwest::Method::DELETE, &url).await;
    }

    println!(
        "\n| run | exit | secrets |\n|---|---|---|\n{}\n",
        table.join("\n")
    );
    assert!(
        findings.is_empty(),
        "{} finding(s):\n{}",
        findings.len(),
        findings.join("\n")
    );
}
