//! A stateful fake of HubSpot's APIs, served over HTTP on `127.0.0.1`.
//!
//! [`HubSpotFake`] follows HubSpot's public API descriptions (the CRM v3
//! objects, properties, owners and pipelines specs, and OAuth v1) for field
//! names, paging, error bodies and rate-limit headers. It serves:
//!
//! | Method and path | Notes |
//! |---|---|
//! | `GET /crm/v3/objects/{type}` | `limit` (default 10, max 100), `after`, `properties`, `propertiesWithHistory`, `archived` |
//! | `GET /crm/v3/objects/{type}/{id}` | `properties`, `propertiesWithHistory`, `archived` |
//! | `POST /crm/v3/objects/{type}/batch/read` | at most 100 inputs; missing ids answer 207 with `errors` |
//! | `POST /crm/v3/objects/{type}/search` | filters, one sort, `query`, `limit` ≤ 200, 10,000-result cap |
//! | `GET /crm/v3/properties/{type}[/{name}]` | every property type HubSpot has |
//! | `GET /crm/v3/owners[/{id}]` | `limit` (default 100, max 500), `after`, `archived`, `email` |
//! | `GET /crm/v3/pipelines/{type}[/{id}[/stages]]` | deals and tickets have pipelines |
//! | `POST /oauth/v1/token` | `authorization_code`, `refresh_token`, `client_credentials` |
//! | `GET /oauth/v1/access-tokens/{token}` | token introspection |
//! | `GET`/`DELETE /oauth/v1/refresh-tokens/{token}` | refresh-token info and revocation |
//! | `GET /account-info/v3/details` | account identity |
//! | `POST /crm/v4/associations/{from}/{to}/batch/read` | at most 1,000 inputs (`{id, after}`); 500 associations per result, then `paging.next.after`; ids without associations answer 207 with `NO_ASSOCIATIONS_FOUND` errors |
//! | `GET /crm/v4/objects/{type}/{id}/associations/{to}` | `limit` (default and max 500), `after` |
//!
//! Anything else answers 404 with HubSpot's `Error` body. CRM and account
//! calls need `Authorization: Bearer <token>` (a configured private-app token
//! or an unexpired OAuth access token).
//!
//! # Records
//!
//! Records are generated on the fly from `(seed, object type, index)`; nothing
//! is stored, so a fake can serve millions of records. Active object `i` has id
//! `1000 + i`; archived object `j` has id `900000000 + j`. Every property value
//! is a string or `null`, as HubSpot v3 sends them; some values are `null` and
//! some are `""` (deterministically) to exercise blank handling.
//! [`HubSpotFake::record`] and [`HubSpotFake::ids`] give tests the truth.
//!
//! Timestamps: `createdAt` grows with the index (five minutes apart, starting
//! 2015-01-01), `updatedAt` (the `lastmodifieddate` / `hs_lastmodifieddate`
//! property) lies 0 to 90 days after it, so sorting by last-modified date is
//! not the id order, and about 30 % of last-modified values are rounded to the
//! minute, so several records can share one timestamp.
//!
//! # Changing records
//!
//! Between (or during) runs a test can change the data the fake serves, to
//! prove an incremental sync: [`HubSpotFake::touch`] and
//! [`HubSpotFake::touch_many`] (updates, also thousands of records on one
//! timestamp), [`HubSpotFake::archive`] (deletes), [`HubSpotFake::merge`]
//! (merges, with HubSpot's `hs_merged_object_ids`) and [`HubSpotFake::add`]
//! (new records). Mutation methods address active records by index: index
//! `i` is the record with id `1000 + i`, whatever happened to the others.
//! Changes take effect at once for every endpoint (list, get, batch read,
//! search, `archived=true` listings) and for the truth helpers
//! ([`HubSpotFake::record`], [`HubSpotFake::record_by_id`],
//! [`HubSpotFake::ids`], [`HubSpotFake::merged_into`]). Only the changed
//! records are stored; the others are still generated on the fly.
//!
//! A touched record shows its version in one property, named by
//! [`HubSpotFake::versioned_property`] (`firstname` for contacts, `name` for
//! companies, `dealname` for deals, `subject` for tickets, `hs_body_preview`
//! for other types): the generated value followed by ` (v{n})`, where `n`
//! counts the record's touches (a blank value becomes `(v{n})`).
//!
//! # Associations
//!
//! Contacts, companies, deals and tickets are associated with each other
//! (each pair of types that are configured), generated from the seed: most
//! records have zero to three associations of each pair, and record index 0
//! of the first type of each pair (contacts with companies, deals and
//! tickets; companies with deals and tickets; deals with tickets) is
//! associated with the first 1,200 records of the other type, so that
//! per-result paging (500 a page) is exercised. Associations hold in both
//! directions; each carries its unlabeled `HUBSPOT_DEFINED` type, some the
//! `Primary` label (pairs with companies) or a `USER_DEFINED` label
//! (contacts with deals). Only active records are associated: archiving or
//! merging a record hides its associations. [`HubSpotFake::associate`] and
//! [`HubSpotFake::dissociate`] change them; [`HubSpotFake::associations`]
//! gives the truth.
//!
//! # Rate limits
//!
//! Limits are rolling windows, checked when a request arrives (before any
//! configured latency). Private-app tokens each have their own window and a
//! daily budget; OAuth access tokens minted by a portal all belong to one app
//! installed in that account, so they share one window (HubSpot counts OAuth
//! limits per app and account, so refreshing a token does not reset it).
//!
//! # Several portals
//!
//! [`HubSpotFake::start_portals`] serves several accounts from one address,
//! as `api.hubapi.com` does: each portal has its own records, hub id,
//! tokens, windows, daily budget, faults and counters, and the bearer token
//! of a request (or the refresh token or code at the token endpoint) picks
//! the portal. [`HubSpotFake::portal`] gives a handle to each.
//!
//! # Fault injection
//!
//! See [`HubSpotFake::fail_next`], [`HubSpotFake::fail_next_with_retry_after`],
//! [`HubSpotFake::token_endpoint_fail_next`], [`HubSpotFake::malformed_page`],
//! [`HubSpotFake::repeat_cursor`], [`HubSpotFake::expire_access_tokens`],
//! [`HubSpotFake::set_latency`] and [`HubSpotFake::set_rate_limit`]; for
//! whole classes of hostile upstream behaviour, [`HubSpotFake::set_hostility`].

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use serde_json::{json, Map, Value};
use url::Url;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::hostile::{HostileSwitch, Hostility, Provider, Wire};

// ---------------------------------------------------------------------------
// Public configuration
// ---------------------------------------------------------------------------

/// A rolling-window rate limit: at most `max` requests in any `window`.
///
/// A request that arrives when `max` requests already arrived within the last
/// `window` is answered with HTTP 429 and does not count against the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeRateLimit {
    /// Requests allowed per window.
    pub max: u32,
    /// Length of the rolling window.
    pub window: Duration,
}

impl FakeRateLimit {
    /// A limit of `max` requests per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self { max, window }
    }

    /// HubSpot's private-app burst limit: 190 requests per 10 seconds.
    pub fn private_app() -> Self {
        Self::new(190, Duration::from_secs(10))
    }

    /// HubSpot's OAuth (public) app burst limit: 100 requests per 10 seconds.
    pub fn oauth_app() -> Self {
        Self::new(100, Duration::from_secs(10))
    }

    /// HubSpot's CRM search limit: 4 requests per second.
    pub fn search() -> Self {
        Self::new(4, Duration::from_secs(1))
    }
}

/// How many records of one object type the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObjectSeed {
    /// Active (non-archived) records, ids `1000..1000 + count` (keep it
    /// below 899,999,000 so active ids stay under the archived range).
    pub count: usize,
    /// Archived records, ids `900000000..900000000 + archived`.
    pub archived: usize,
}

impl ObjectSeed {
    /// `count` active and `archived` archived records.
    pub fn new(count: usize, archived: usize) -> Self {
        Self { count, archived }
    }
}

/// Configuration of a [`HubSpotFake`].
///
/// Build it with struct update syntax over [`FakeConfig::default`]:
///
/// ```
/// use headwater::testkit::{FakeConfig, ObjectSeed};
///
/// let mut config = FakeConfig { seed: 7, custom_properties: 7, ..FakeConfig::default() };
/// config.objects.insert("contacts".into(), ObjectSeed::new(100_000, 10));
/// ```
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Seed of the record generator (default 42).
    pub seed: u64,
    /// Object types served and their record counts. Keys are HubSpot object
    /// type names (`contacts`, `companies`, `deals`, `tickets`, `calls`,
    /// `notes`, custom names like `p_widgets`). Default: contacts 250 (5
    /// archived), companies 60 (3), deals 80 (4), tickets 40 (2).
    pub objects: BTreeMap<String, ObjectSeed>,
    /// Extra custom properties per object type, named `custom_prop_{i}`
    /// (default 5). Their types cycle through `date`, `bool`, `phone_number`,
    /// `enumeration` (checkbox), `number` (calculated), `string` (textarea),
    /// `datetime`, `enumeration` (radio), `string`, `number`, `enumeration`
    /// (select).
    pub custom_properties: usize,
    /// Name prefix of the custom properties (default `custom_prop_`): two
    /// fakes with other prefixes are portals with different properties.
    pub custom_property_prefix: String,
    /// Number of active owners (default 12). One archived owner is served too.
    pub owners: usize,
    /// Burst limit for CRM calls, per private-app token and per OAuth app
    /// (default `None`: unlimited). HubSpot: [`FakeRateLimit::private_app`],
    /// [`FakeRateLimit::oauth_app`].
    pub rate_limit: Option<FakeRateLimit>,
    /// Extra limit for search calls (default `None`). HubSpot:
    /// [`FakeRateLimit::search`].
    pub search_rate_limit: Option<FakeRateLimit>,
    /// Delay added to every response (default zero).
    pub latency: Duration,
    /// Static private-app tokens accepted as bearer tokens (default
    /// `["pat-fake-token"]`).
    pub private_app_tokens: Vec<String>,
    /// OAuth client id accepted by `POST /oauth/v1/token`.
    pub client_id: String,
    /// OAuth client secret accepted by `POST /oauth/v1/token`.
    pub client_secret: String,
    /// Lifetime of minted access tokens (default 30 minutes, as HubSpot).
    pub access_token_ttl: Duration,
    /// When true, every refresh returns a new refresh token and the old one
    /// stops working (default false: HubSpot keeps refresh tokens).
    pub rotate_refresh_tokens: bool,
    /// Account (portal) id (default 62515).
    pub hub_id: u64,
    /// Account domain (default `fake-portal.hubspot.com`).
    pub hub_domain: String,
    /// Email of the user who installed the app (default `ops@example.com`).
    pub user: String,
    /// Id of that user (default 7000001).
    pub user_id: u64,
    /// Id of the OAuth app (default 1234567).
    pub app_id: u64,
    /// Daily request budget of each private-app token (default 1,000,000,
    /// HubSpot Enterprise). Reported in `X-HubSpot-RateLimit-Daily`; past it
    /// calls answer 429 with policy `DAILY`.
    pub daily_limit: u64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        let mut objects = BTreeMap::new();
        objects.insert("contacts".to_string(), ObjectSeed::new(250, 5));
        objects.insert("companies".to_string(), ObjectSeed::new(60, 3));
        objects.insert("deals".to_string(), ObjectSeed::new(80, 4));
        objects.insert("tickets".to_string(), ObjectSeed::new(40, 2));
        Self {
            seed: 42,
            objects,
            custom_properties: 5,
            custom_property_prefix: "custom_prop_".to_string(),
            owners: 12,
            rate_limit: None,
            search_rate_limit: None,
            latency: Duration::ZERO,
            private_app_tokens: vec!["pat-fake-token".to_string()],
            client_id: "fake-client-id".to_string(),
            client_secret: "fake-client-secret".to_string(),
            access_token_ttl: Duration::from_secs(30 * 60),
            rotate_refresh_tokens: false,
            hub_id: 62515,
            hub_domain: "fake-portal.hubspot.com".to_string(),
            user: "ops@example.com".to_string(),
            user_id: 7_000_001,
            app_id: 1_234_567,
            daily_limit: 1_000_000,
        }
    }
}

impl FakeConfig {
    /// The default configuration made distinct for portal `n` of a
    /// multi-portal fake ([`HubSpotFake::start_portals`]): seed `42 + n`
    /// (other records), hub id `62515 + n`, domain
    /// `fake-portal-{n}.hubspot.com`, private-app token `pat-fake-token-{n}`.
    pub fn for_portal(n: usize) -> Self {
        let n64 = n as u64;
        Self {
            seed: 42 + n64,
            hub_id: 62_515 + n64,
            hub_domain: format!("fake-portal-{n}.hubspot.com"),
            private_app_tokens: vec![format!("pat-fake-token-{n}")],
            ..Self::default()
        }
    }
}

/// Counters of what the fake has served since start or [`HubSpotFake::reset_stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FakeStats {
    /// Requests other than `POST /oauth/v1/token` that reached the fake
    /// (including rejected ones).
    pub requests: u64,
    /// Responses with status 429 (rate limited or injected).
    pub rate_limited: u64,
    /// Successful `refresh_token` grants.
    pub token_refreshes: u64,
    /// Successful `authorization_code` grants.
    pub code_exchanges: u64,
    /// All requests to `POST /oauth/v1/token`, successful or not.
    pub token_requests: u64,
    /// The largest number of accepted requests seen in one rolling window of
    /// the configured [`FakeConfig::rate_limit`] (0 when none is configured).
    pub max_in_window: u32,
    /// Requests per route, keyed like `GET /crm/v3/objects/contacts` (ids and
    /// tokens in paths appear as `{id}` / `{token}`).
    pub per_path: BTreeMap<String, u64>,
    /// The number of inputs of each association batch read served, in order.
    pub association_batch_sizes: Vec<usize>,
}

// ---------------------------------------------------------------------------
// The fake
// ---------------------------------------------------------------------------

/// A stateful fake of HubSpot's API on a local HTTP server.
///
/// Cloning gives another handle to the same server; the server stops when the
/// last handle is dropped. All methods are thread-safe and can be called while
/// requests are in flight.
#[derive(Clone)]
pub struct HubSpotFake {
    server: Arc<MockServer>,
    hub: Arc<Hub>,
    /// The portal this handle acts on.
    inner: Arc<Inner>,
}

impl fmt::Debug for HubSpotFake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSpotFake")
            .field("uri", &self.inner.uri)
            .field("portal", &self.inner.portal)
            .field("hub_id", &self.inner.cfg.hub_id)
            .finish_non_exhaustive()
    }
}

impl HubSpotFake {
    /// Starts the fake on a random port of `127.0.0.1`, serving one portal.
    pub async fn start(config: FakeConfig) -> HubSpotFake {
        Self::start_portals(vec![config]).await
    }

    /// Starts one fake serving several portals (accounts) on one address, as
    /// HubSpot's single API host serves every account. Each portal has its
    /// own configuration: records (from its own seed), hub id and domain,
    /// private-app tokens, OAuth tokens it mints, rolling rate-limit windows,
    /// daily budget, faults and counters. A request belongs to the portal
    /// that issued its bearer token (or, at `POST /oauth/v1/token`, its
    /// refresh token or authorization code; at `/oauth/v1/access-tokens/{token}`
    /// and `/oauth/v1/refresh-tokens/{token}`, the token in the path). A
    /// request no portal claims (no token, an unknown one) is answered by
    /// portal 0, which refuses it. [`FakeConfig::for_portal`] gives
    /// distinct portals.
    ///
    /// Returns a handle to portal 0; [`HubSpotFake::portal`] gives the
    /// others. Records are generated from the seeds, so many portals cost
    /// little memory beyond their property definitions.
    ///
    /// # Panics
    ///
    /// When `configs` is empty, or two portals share a private-app token
    /// or a hub id (a request could not tell them apart).
    pub async fn start_portals(configs: Vec<FakeConfig>) -> HubSpotFake {
        assert!(
            !configs.is_empty(),
            "HubSpotFake::start_portals: at least one portal is needed"
        );
        let server = MockServer::builder()
            .disable_request_recording()
            .start()
            .await;
        let hub = Arc::new(Hub::new(configs, server.uri()));
        Mock::given(wiremock::matchers::any())
            .respond_with(Responder(Arc::clone(&hub)))
            .mount(&server)
            .await;
        let inner = Arc::clone(&hub.portals[0]);
        HubSpotFake {
            server: Arc::new(server),
            hub,
            inner,
        }
    }

    /// A handle to portal `index` (in the order given to
    /// [`HubSpotFake::start_portals`]) on the same server: every method of
    /// the handle (truth helpers, mutations, tokens, faults, limits,
    /// [`HubSpotFake::stats`]) acts on that portal only.
    ///
    /// # Panics
    ///
    /// When there is no such portal.
    pub fn portal(&self, index: usize) -> HubSpotFake {
        let Some(inner) = self.hub.portals.get(index) else {
            panic!(
                "HubSpotFake::portal: no portal {index} (the fake serves {})",
                self.hub.portals.len()
            );
        };
        HubSpotFake {
            server: Arc::clone(&self.server),
            hub: Arc::clone(&self.hub),
            inner: Arc::clone(inner),
        }
    }

    /// How many portals the fake serves.
    pub fn portals(&self) -> usize {
        self.hub.portals.len()
    }

    /// The index of the portal this handle acts on.
    pub fn portal_index(&self) -> usize {
        self.inner.portal
    }

    /// This portal's hub id (account id), as `check()` reports it.
    pub fn hub_id(&self) -> u64 {
        self.inner.cfg.hub_id
    }

    /// This portal's first private-app token, if it has one.
    pub fn private_app_token(&self) -> Option<String> {
        self.inner.cfg.private_app_tokens.first().cloned()
    }

    /// Revokes one of this portal's refresh tokens, as an uninstall or a
    /// user removing the app does: the token endpoint then answers it with
    /// `400 BAD_REFRESH_TOKEN` (HubSpot's `invalid_grant`). Access tokens
    /// already minted keep working until they expire. Returns false when
    /// the portal did not know the token.
    pub fn revoke_refresh_token(&self, refresh_token: &str) -> bool {
        self.inner.state().refresh.remove(refresh_token).is_some()
    }

    /// Base URL of the fake, like `http://127.0.0.1:41234` (no trailing slash);
    /// use it where the real API has `https://api.hubapi.com`.
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// The configuration, with the current latency and rate limits. Record
    /// counts are the configured ones; use [`HubSpotFake::ids`] for the
    /// counts after changes.
    pub fn config(&self) -> FakeConfig {
        let mut config = self.inner.cfg.clone();
        let st = self.inner.state();
        config.rate_limit = st.rate_limit;
        config.search_rate_limit = st.search_rate_limit;
        drop(st);
        config.latency = self.inner.latency();
        config
    }

    /// The object types served, by canonical name.
    pub fn object_types(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.schemas.keys().cloned().collect();
        names.sort();
        names
    }

    /// The full JSON of the record with index `index` (id `1000 + index`) of
    /// `object_type`, with every property, exactly as the list endpoint
    /// serves it (a `SimplePublicObject`), changes included. A record
    /// archived by [`HubSpotFake::archive`] is returned as the
    /// `archived=true` listing serves it. `Value::Null` when the type is
    /// unknown, `index` is out of range or the record was merged away.
    pub fn record(&self, object_type: &str, index: usize) -> Value {
        let Some(schema) = self.inner.resolve(object_type) else {
            return Value::Null;
        };
        let muts = self.inner.snapshot(schema);
        let view = self.inner.view(schema, &muts);
        match muts.life(index) {
            _ if index >= view.population() => Value::Null,
            Life::Merged(_) => Value::Null,
            Life::Active | Life::Archived(_) => {
                self.inner.record_value(schema, &view.rec(false, index))
            }
        }
    }

    /// The full JSON of the record with `id` (active or archived), changes
    /// included, or `None` (also for a merged-away id, see
    /// [`HubSpotFake::merged_into`]).
    pub fn record_by_id(&self, object_type: &str, id: &str) -> Option<Value> {
        let schema = self.inner.resolve(object_type)?;
        let id: u64 = id.parse().ok()?;
        let muts = self.inner.snapshot(schema);
        let view = self.inner.view(schema, &muts);
        match view.locate(id)? {
            (_, _, Life::Merged(_)) => None,
            (space, pos, _) => Some(self.inner.record_value(schema, &view.rec(space, pos))),
        }
    }

    /// Ids of the active (or, with `archived`, the archived) records of
    /// `object_type`, ascending, as the list endpoint walks them, changes
    /// included: archived records are those generated archived and those
    /// archived by [`HubSpotFake::archive`]; merged-away records are in
    /// neither. Empty for an unknown type.
    pub fn ids(&self, object_type: &str, archived: bool) -> Vec<String> {
        let Some(schema) = self.inner.resolve(object_type) else {
            return Vec::new();
        };
        let muts = self.inner.snapshot(schema);
        let view = self.inner.view(schema, &muts);
        let id = |base: u64, pos: usize| (base + pos as u64).to_string();
        if archived {
            let changed = muts.archived.iter().map(|&pos| id(ACTIVE_ID_BASE, pos));
            let generated = (0..schema.seed.archived).map(|j| id(ARCHIVED_ID_BASE, j));
            changed.chain(generated).collect()
        } else {
            (0..view.population())
                .filter(|&pos| muts.life(pos) == Life::Active)
                .map(|pos| id(ACTIVE_ID_BASE, pos))
                .collect()
        }
    }

    /// The id of the active record that the record with `loser_id` was merged
    /// into (following later merges of the survivor), or `None` when
    /// `loser_id` was not merged away. May name a record archived since.
    pub fn merged_into(&self, object_type: &str, loser_id: &str) -> Option<String> {
        let schema = self.inner.resolve(object_type)?;
        let id: u64 = loser_id.trim().parse().ok()?;
        let muts = self.inner.snapshot(schema);
        let view = self.inner.view(schema, &muts);
        match view.locate(id)? {
            (false, pos, Life::Merged(_)) => {
                Some((ACTIVE_ID_BASE + view.survivor(pos) as u64).to_string())
            }
            _ => None,
        }
    }

    /// The property that shows how often a record was touched (see the
    /// module docs): `firstname` for contacts, `name` for companies,
    /// `dealname` for deals, `subject` for tickets, `hs_body_preview` for
    /// other types. `None` for an unknown type.
    pub fn versioned_property(&self, object_type: &str) -> Option<String> {
        let schema = self.inner.resolve(object_type)?;
        schema
            .props
            .iter()
            .find(|p| p.versioned)
            .map(|p| p.name.clone())
    }

    /// Updates active record `index` (id `1000 + index`) of `object_type` at
    /// `updated_at_ms` (epoch millis): its `updatedAt` and last-modified
    /// property (`lastmodifieddate` for contacts, `hs_lastmodifieddate`
    /// otherwise) become that time, and its
    /// [versioned property](HubSpotFake::versioned_property) gets the suffix
    /// ` (v{n})`, `n` counting the record's touches. Takes effect at once
    /// for every endpoint.
    ///
    /// # Panics
    ///
    /// When the type is unknown or `index` is not an active record (out of
    /// range, archived or merged away).
    pub fn touch(&self, object_type: &str, index: usize, updated_at_ms: i64) {
        self.touch_many(object_type, [index], updated_at_ms);
    }

    /// [`HubSpotFake::touch`] for many records at one timestamp (duplicate
    /// indices count once), as a bulk update does. Cheap enough for tens of
    /// thousands of records, e.g. to put more than 10,000 records (HubSpot's
    /// search cap) on one last-modified time.
    ///
    /// # Panics
    ///
    /// As [`HubSpotFake::touch`], before changing anything.
    pub fn touch_many(
        &self,
        object_type: &str,
        indices: impl IntoIterator<Item = usize>,
        updated_at_ms: i64,
    ) {
        let indices: BTreeSet<usize> = indices.into_iter().collect();
        self.inner.mutate(object_type, |schema, seed, muts| {
            for &pos in &indices {
                muts.check_active(schema, pos, "touch");
            }
            for pos in indices {
                let o = muts.entry(schema, seed, pos);
                o.updated = updated_at_ms;
                o.version += 1;
            }
        });
    }

    /// Archives (deletes) active record `index` of `object_type` at `at_ms`:
    /// it leaves the active listing, search and (`archived=false`) get and
    /// batch read (which answers it in `errors` as not found, HTTP 207), and
    /// joins the `archived=true` listing, get and batch read with its id,
    /// `archived: true`, `archivedAt` and `updatedAt` equal to `at_ms`.
    /// Archived active records come first in the archived listing (their
    /// ids are lower than those of the generated archived records).
    ///
    /// # Panics
    ///
    /// When the type is unknown or `index` is not an active record.
    pub fn archive(&self, object_type: &str, index: usize, at_ms: i64) {
        self.inner.mutate(object_type, |schema, seed, muts| {
            muts.check_active(schema, index, "archive");
            let o = muts.entry(schema, seed, index);
            o.life = Life::Archived(at_ms);
            o.updated = at_ms;
            muts.archived.insert(index);
        });
    }

    /// Merges active record `loser_index` into active record
    /// `survivor_index` at `at_ms`, as HubSpot does: the loser leaves the
    /// active listing, search and batch read and does not join the archived
    /// listing; a get of its id answers the survivor. The survivor is
    /// touched at `at_ms` (see [`HubSpotFake::touch`]) and its
    /// `hs_merged_object_ids` (`;`-separated) lists the ids merged into it,
    /// the loser's own merged ids included, the loser's id last.
    ///
    /// # Panics
    ///
    /// When the type is unknown, either index is not an active record, or
    /// both are the same.
    pub fn merge(&self, object_type: &str, loser_index: usize, survivor_index: usize, at_ms: i64) {
        self.inner.mutate(object_type, |schema, seed, muts| {
            muts.check_active(schema, loser_index, "merge");
            muts.check_active(schema, survivor_index, "merge");
            assert_ne!(
                loser_index, survivor_index,
                "HubSpotFake::merge: a record cannot be merged into itself"
            );
            let loser = muts.entry(schema, seed, loser_index);
            loser.life = Life::Merged(survivor_index);
            let mut ids: Vec<String> = loser
                .merged_ids
                .iter()
                .flat_map(|s| s.split(';'))
                .map(str::to_string)
                .collect();
            ids.push((ACTIVE_ID_BASE + loser_index as u64).to_string());
            let survivor = muts.entry(schema, seed, survivor_index);
            let merged = match survivor.merged_ids.take() {
                Some(existing) => format!("{existing};{}", ids.join(";")),
                None => ids.join(";"),
            };
            survivor.merged_ids = Some(merged);
            survivor.updated = at_ms;
            survivor.version += 1;
        });
    }

    /// Appends `n` active records to `object_type`, created and updated at
    /// `created_at_ms`; their ids continue after the highest active id.
    /// Returns their indices.
    ///
    /// # Panics
    ///
    /// When the type is unknown or active ids would reach the archived id
    /// range (900,000,000).
    pub fn add(&self, object_type: &str, n: usize, created_at_ms: i64) -> Range<usize> {
        self.inner.mutate(object_type, |schema, _, muts| {
            let start = muts.population(schema);
            let end = start.saturating_add(n);
            assert!(
                end <= MAX_ACTIVE,
                "HubSpotFake::add: {} would have more than {MAX_ACTIVE} active ids",
                schema.name
            );
            for pos in start..end {
                muts.overrides.insert(
                    pos,
                    Override {
                        created: Some(created_at_ms),
                        updated: created_at_ms,
                        version: 0,
                        merged_ids: None,
                        life: Life::Active,
                    },
                );
            }
            muts.added += n;
            start..end
        })
    }

    /// Associates active record `from_index` of `from_type` with active
    /// record `to_index` of `to_type` (both directions, the unlabeled type
    /// only), as `PUT /crm/v4/objects/…/associations/default/…` does. Returns
    /// false when they were associated already.
    ///
    /// # Panics
    ///
    /// When the two types are not an associated pair the fake serves (both
    /// of contacts, companies, deals, tickets, and configured), or an index
    /// is not an active record.
    pub fn associate(
        &self,
        from_type: &str,
        from_index: usize,
        to_type: &str,
        to_index: usize,
    ) -> bool {
        self.inner
            .change_association(from_type, from_index, to_type, to_index, true)
    }

    /// Removes every association between active record `from_index` of
    /// `from_type` and active record `to_index` of `to_type` (both
    /// directions), as `DELETE /crm/v4/objects/…/associations/…` does.
    /// Returns false when they were not associated.
    ///
    /// # Panics
    ///
    /// As [`HubSpotFake::associate`].
    pub fn dissociate(
        &self,
        from_type: &str,
        from_index: usize,
        to_type: &str,
        to_index: usize,
    ) -> bool {
        self.inner
            .change_association(from_type, from_index, to_type, to_index, false)
    }

    /// Every association the fake serves from `from_type` to `to_type`, as
    /// `(from id, to id)` pairs of active records, sorted; changes included.
    /// Empty when the types are not an associated pair.
    pub fn associations(&self, from_type: &str, to_type: &str) -> Vec<(String, String)> {
        let Some(side) = self.inner.assoc_side(from_type, to_type) else {
            return Vec::new();
        };
        let (from, to) = (side.from, side.to);
        let (mf, mt) = (self.inner.snapshot(from), self.inner.snapshot(to));
        let (vf, vt) = (self.inner.view(from, &mf), self.inner.view(to, &mt));
        let mut out = Vec::new();
        for pos in 0..vf.population() {
            if !vf.is_active(pos) {
                continue;
            }
            let from_id = (ACTIVE_ID_BASE + pos as u64).to_string();
            for (to_pos, _) in self.inner.neighbours(&side, pos, &vt) {
                out.push((
                    from_id.clone(),
                    (ACTIVE_ID_BASE + to_pos as u64).to_string(),
                ));
            }
        }
        out
    }

    /// The next `n` association batch reads answer one of their inputs (the
    /// first) with an `INTERNAL_ERROR` in `errors` (HTTP 207) instead of its
    /// associations, as a partial failure of HubSpot's batch endpoints.
    pub fn fail_association_reads(&self, n: usize) {
        self.inner.state().association_faults += n;
    }

    /// Names of every property of `object_type` (defaults and custom), in
    /// definition order. Empty for an unknown type.
    pub fn property_names(&self, object_type: &str) -> Vec<String> {
        self.inner
            .resolve(object_type)
            .map(|s| s.props.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Mints a one-time authorization code for `scopes`, as HubSpot's consent
    /// screen would; exchange it at `POST /oauth/v1/token`.
    pub fn authorize(&self, scopes: &[&str]) -> String {
        let code = uuid::Uuid::new_v4().to_string();
        let scopes = scopes.iter().map(|s| (*s).to_string()).collect();
        self.inner.state().codes.insert(code.clone(), scopes);
        self.inner.register(&code);
        code
    }

    /// Mints an access token and a refresh token directly (default scopes),
    /// returning `(access_token, refresh_token)`.
    pub fn mint_tokens(&self) -> (String, String) {
        let mut st = self.inner.state();
        let scopes = default_scopes();
        let refresh = new_refresh_token();
        st.refresh.insert(refresh.clone(), scopes.clone());
        self.inner.register(&refresh);
        let access = self.inner.mint_access(&mut st, scopes);
        (access, refresh)
    }

    /// Makes every access token minted so far expired.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for tok in self.inner.state().access.values_mut() {
            tok.expires_at = tok.expires_at.min(now);
        }
    }

    /// The next `n` requests (other than `POST /oauth/v1/token`) answer
    /// `status`: a 5xx or 4xx status gets HubSpot's `Error` body; 429 gets the
    /// rate-limit body (no `Retry-After`). Statuses outside 100..=999 become 500.
    pub fn fail_next(&self, n: usize, status: u16) {
        let status = sanitize_status(status);
        let mut st = self.inner.state();
        for _ in 0..n {
            st.faults.push_back(Fault {
                status,
                retry_after: None,
            });
        }
    }

    /// The next `n` requests (other than `POST /oauth/v1/token`) answer 429
    /// with the rate-limit body and `Retry-After: {secs}`.
    pub fn fail_next_with_retry_after(&self, n: usize, secs: u64) {
        let mut st = self.inner.state();
        for _ in 0..n {
            st.faults.push_back(Fault {
                status: 429,
                retry_after: Some(secs),
            });
        }
    }

    /// The next `n` requests to `POST /oauth/v1/token` answer `status`
    /// (429 with the rate-limit body, others with HubSpot's `Error` body).
    pub fn token_endpoint_fail_next(&self, n: usize, status: u16) {
        let status = sanitize_status(status);
        let mut st = self.inner.state();
        for _ in 0..n {
            st.token_faults.push_back(Fault {
                status,
                retry_after: None,
            });
        }
    }

    /// Breaks one page of the (non-archived) list endpoint of `object_type`.
    ///
    /// Page `page_index` is the page starting at record index
    /// `page_index * limit` (the `page_index`-th page of a walk with a constant
    /// `limit`). Every time that page is served, the result at position
    /// `min(3, len - 1)` has `"properties"` as a JSON string
    /// (`"[object Object]"`) instead of an object: the body still parses as
    /// JSON but violates the schema at `results[3].properties`.
    pub fn malformed_page(&self, object_type: &str, page_index: usize) {
        let name = self.inner.canonical(object_type);
        self.inner.state().malformed.insert((name, page_index));
    }

    /// Every time page `page_index` of the `object_type` listing (counted as
    /// in [`HubSpotFake::malformed_page`]) is served, the record at position
    /// `min(3, len - 1)` has a bad value (`kind`) in its `properties`
    /// (as `hw_bad`): the rest of the page stays valid.
    pub fn bad_record(&self, object_type: &str, page_index: usize, kind: super::BadRecord) {
        let name = self.inner.canonical(object_type);
        self.inner.state().bad.insert((name, page_index), kind);
    }

    /// From page `at_page` on (counted as in [`HubSpotFake::malformed_page`]),
    /// the list endpoint of `object_type` answers `paging.next.after` equal to
    /// the cursor that requested the page, so a naive client loops forever.
    pub fn repeat_cursor(&self, object_type: &str, at_page: usize) {
        let name = self.inner.canonical(object_type);
        let mut st = self.inner.state();
        let entry = st.repeat.entry(name).or_insert(at_page);
        *entry = (*entry).min(at_page);
    }

    /// From page `at_page` on (counted as in [`HubSpotFake::malformed_page`]),
    /// the list endpoint of `object_type` answers without `paging`, as if
    /// the listing ended there: a truncated listing that still answers 200.
    pub fn drop_paging(&self, object_type: &str, at_page: usize) {
        let name = self.inner.canonical(object_type);
        let mut st = self.inner.state();
        let entry = st.drop_paging.entry(name).or_insert(at_page);
        *entry = (*entry).min(at_page);
    }

    /// Switches this portal into a hostile mode (see [`Hostility`]), or
    /// back to normal with `None`. The records served stay the same; what
    /// the mode damages is described on each variant.
    pub fn set_hostility(&self, hostility: Option<Hostility>) {
        self.inner.hostile.set(hostility);
    }

    /// Every OAuth token and authorization code this portal has issued
    /// (access and refresh tokens, codes), for tests that check no secret
    /// shows up in output.
    pub fn issued_tokens(&self) -> Vec<String> {
        let portal = self.inner.portal;
        let mut tokens: Vec<String> = self
            .hub
            .minted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, p)| **p == portal)
            .map(|(t, _)| t.clone())
            .collect();
        tokens.sort();
        tokens
    }

    /// The hostile mode this portal is in, if any.
    pub fn hostility(&self) -> Option<Hostility> {
        self.inner.hostile.get()
    }

    /// Clears injected faults, malformed pages, repeating cursors and
    /// dropped paging.
    pub fn clear_faults(&self) {
        let mut st = self.inner.state();
        st.drop_paging.clear();
        st.faults.clear();
        st.token_faults.clear();
        st.malformed.clear();
        st.bad.clear();
        st.repeat.clear();
    }

    /// Sets the delay added to every response.
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.inner
            .latency_nanos
            .store(nanos, AtomicOrdering::Relaxed);
    }

    /// Sets (or removes) the burst limit for CRM calls.
    pub fn set_rate_limit(&self, limit: Option<FakeRateLimit>) {
        self.inner.state().rate_limit = limit;
    }

    /// Sets (or removes) the limit for search calls.
    pub fn set_search_rate_limit(&self, limit: Option<FakeRateLimit>) {
        self.inner.state().search_rate_limit = limit;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FakeStats {
        let i = &self.inner;
        let (per_path, association_batch_sizes) = {
            let st = i.state();
            (st.per_path.clone(), st.association_batches.clone())
        };
        FakeStats {
            requests: i.requests.load(AtomicOrdering::Relaxed),
            rate_limited: i.rate_limited.load(AtomicOrdering::Relaxed),
            token_refreshes: i.token_refreshes.load(AtomicOrdering::Relaxed),
            code_exchanges: i.code_exchanges.load(AtomicOrdering::Relaxed),
            token_requests: i.token_requests.load(AtomicOrdering::Relaxed),
            max_in_window: i.max_in_window.load(AtomicOrdering::Relaxed),
            per_path,
            association_batch_sizes,
        }
    }

    /// Resets every counter of [`HubSpotFake::stats`] to zero (rate-limit
    /// windows are kept).
    pub fn reset_stats(&self) {
        let i = &self.inner;
        for c in [
            &i.requests,
            &i.rate_limited,
            &i.token_refreshes,
            &i.code_exchanges,
            &i.token_requests,
        ] {
            c.store(0, AtomicOrdering::Relaxed);
        }
        i.max_in_window.store(0, AtomicOrdering::Relaxed);
        let mut st = i.state();
        st.per_path.clear();
        st.association_batches.clear();
    }
}

// ---------------------------------------------------------------------------
// Constants and small helpers
// ---------------------------------------------------------------------------

const ACTIVE_ID_BASE: u64 = 1000;
const ARCHIVED_ID_BASE: u64 = 900_000_000;
const OWNER_ID_BASE: u64 = 60_000_000;
const ARCHIVED_OWNER_ID_BASE: u64 = 69_000_000;
const OWNER_USER_ID_BASE: u64 = 9_100_000;
const DAY_MS: i64 = 86_400_000;
/// 2015-01-01T00:00:00Z.
const BASE_MS: i64 = 1_420_070_400_000;
/// Distance between the creation times of consecutive records.
const STEP_MS: i64 = 300_000;
/// Largest gap between creation and last modification.
const MAX_LAG_MS: i64 = 90 * DAY_MS;
/// `updatedAt - createdAt < UPDATE_SPAN_MS` for every record.
const UPDATE_SPAN_MS: i64 = MAX_LAG_MS + 60_000;
/// HubSpot search returns at most this many results per query.
const SEARCH_CAP: usize = 10_000;
const LIST_MAX_LIMIT: i64 = 100;
const OWNERS_MAX_LIMIT: i64 = 500;
const SEARCH_MAX_LIMIT: i64 = 200;
const PROPERTIES_MAX_QUERY_BYTES: usize = 7000;
const JSON_MIME: &str = "application/json;charset=utf-8";
const DEFINITIONS_CREATED: &str = "2019-08-06T02:41:52.107Z";
const CUSTOM_DEFINITIONS_CREATED: &str = "2023-05-10T12:00:00.000Z";
const EPOCH_ISO: &str = "1970-01-01T00:00:00Z";
const PIPELINE_CREATED: &str = "2021-03-15T09:30:00.000Z";
const AUTH_MESSAGE: &str = "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview";

const fn fnv1a(s: &str) -> u64 {
    let bytes = s.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const K_CREATED: u64 = fnv1a("@created");
const K_UPDATED: u64 = fnv1a("@updated");
const K_ARCHIVED: u64 = fnv1a("@archived");
const K_FIRST: u64 = fnv1a("@firstname");
const K_LAST: u64 = fnv1a("@lastname");
const K_COMPANY: u64 = fnv1a("@company");
const K_LOCATION: u64 = fnv1a("@location");
const K_PIPELINE: u64 = fnv1a("@pipeline");
const K_STAGE: u64 = fnv1a("@stage");

/// SplitMix64 finalizer: a fast, well-mixed deterministic hash.
fn mix(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pick<T: Copy>(items: &[T], h: u64) -> T {
    items[(h % items.len() as u64) as usize]
}

fn sanitize_status(status: u16) -> u16 {
    if (100..=999).contains(&status) {
        status
    } else {
        500
    }
}

fn correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn default_scopes() -> Vec<String> {
    [
        "oauth",
        "crm.objects.contacts.read",
        "crm.objects.companies.read",
        "crm.objects.deals.read",
        "crm.objects.owners.read",
        "crm.schemas.contacts.read",
        "tickets",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect()
}

fn new_access_token() -> String {
    format!(
        "CO{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn new_refresh_token() -> String {
    format!("na1-{}", uuid::Uuid::new_v4())
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        // `b` is ASCII, so `i` is a char boundary.
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends `ms` as `2024-03-01T10:00:00.123Z`.
fn push_iso(out: &mut String, ms: i64) {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(dt) => {
            let _ = write!(
                out,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                dt.year(),
                dt.month(),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.timestamp_subsec_millis()
            );
        }
        None => out.push_str(EPOCH_ISO),
    }
}

fn iso(ms: i64) -> String {
    let mut s = String::with_capacity(24);
    push_iso(&mut s, ms);
    s
}

/// Appends the UTC date of `ms` as `2024-03-01`.
fn push_date(out: &mut String, ms: i64) {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(dt) => {
            let _ = write!(out, "{:04}-{:02}-{:02}", dt.year(), dt.month(), dt.day());
        }
        None => out.push_str("1970-01-01"),
    }
}

/// Parses epoch milliseconds, RFC 3339 or a `YYYY-MM-DD` date.
fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_millis());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc().timestamp_millis())
}

fn encode_cursor(id: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(id.to_string())
}

/// Accepts the fake's opaque cursors and plain numeric ids (HubSpot's own
/// cursors for objects are often plain ids).
fn decode_cursor(after: &str) -> Option<u64> {
    let after = after.trim();
    if !after.is_empty() && after.bytes().all(|b| b.is_ascii_digit()) {
        return after.parse().ok();
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(after)
        .ok()?;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
}

fn ascii_slug(out: &mut String, s: &str) {
    for c in s.chars() {
        let c = match c {
            'ä' | 'á' | 'à' | 'ã' | 'â' => 'a',
            'é' | 'è' | 'ê' | 'ë' | 'ễ' => 'e',
            'ö' | 'ó' | 'ô' => 'o',
            'ü' | 'ú' => 'u',
            'í' | 'î' => 'i',
            'ç' => 'c',
            'ñ' => 'n',
            'ø' => 'o',
            other => other,
        };
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        }
    }
}

// ---------------------------------------------------------------------------
// Generated data
// ---------------------------------------------------------------------------

const FIRST_NAMES: &[&str] = &[
    "Ada", "Alan", "Grace", "Linus", "Margaret", "Dennis", "Barbara", "Ken", "Radia", "Tim",
    "Frances", "Edsger", "Sophie", "Zoë", "José", "Chloé", "Björn", "Aisha", "Wei", "Priya",
    "Liam", "Olivia", "Noah", "Emma", "Mateo", "Amara", "Kenji", "Fatima", "Lars", "Inês",
];
const LAST_NAMES: &[&str] = &[
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Perlman",
    "Berners-Lee",
    "Allen",
    "Dijkstra",
    "Wilson",
    "O'Brien",
    "Müller",
    "García",
    "Nguyễn",
    "Kowalski",
    "Okafor",
    "Tanaka",
    "Singh",
    "Smith",
    "Johnson",
    "Dubois",
    "Rossi",
    "Larsen",
    "Haddad",
    "Costa",
    "Schmidt",
    "Kim",
];
const COMPANY_A: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Stark",
    "Wayne",
    "Wonka",
    "Cyberdyne",
    "Soylent",
    "Tyrell",
    "Aperture",
    "Massive",
    "Pied Piper",
    "Oscorp",
];
const COMPANY_B: &[&str] = &[
    "Analytics",
    "Industries",
    "Labs",
    "Systems",
    "Logistics",
    "Foods",
    "Health",
    "Media",
    "Robotics",
    "Capital",
    "Software",
    "Energy",
];
const LOCATIONS: &[(&str, &str, &str)] = &[
    ("Boston", "MA", "United States"),
    ("Cambridge", "MA", "United States"),
    ("San Francisco", "CA", "United States"),
    ("Austin", "TX", "United States"),
    ("New York", "NY", "United States"),
    ("Toronto", "ON", "Canada"),
    ("Dublin", "Dublin", "Ireland"),
    ("Berlin", "Berlin", "Germany"),
    ("São Paulo", "SP", "Brazil"),
    ("Tokyo", "Tokyo", "Japan"),
    ("Sydney", "NSW", "Australia"),
    ("London", "England", "United Kingdom"),
    ("Paris", "Île-de-France", "France"),
    ("Bengaluru", "Karnataka", "India"),
    ("Zürich", "Zürich", "Switzerland"),
];
const JOB_TITLES: &[&str] = &[
    "CEO",
    "CTO",
    "VP Marketing",
    "Marketing Manager",
    "Sales Director",
    "Account Executive",
    "Data Engineer",
    "Software Engineer",
    "Head of Growth",
    "Operations Lead",
    "Customer Success Manager",
    "Product Manager",
];
const EMAIL_DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
];
const AREA_CODES: &[u32] = &[617, 415, 212, 512, 206, 312, 303, 404];
const PRODUCTS: &[&str] = &[
    "Annual subscription",
    "Onboarding package",
    "Enterprise licence",
    "Renewal",
    "Add-on seats",
    "Consulting",
];
const SUBJECTS: &[&str] = &[
    "Cannot log in",
    "Invoice question",
    "Feature request: export",
    "Bug: sync stalls",
    "Password reset",
    "Data import failed",
    "Billing address change",
    "API rate limit question",
];
const WORDS: &[&str] = &[
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "enim",
    "minim",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "aliquip",
    "commodo",
];
const LIFECYCLE_STAGES: &[(&str, &str)] = &[
    ("Subscriber", "subscriber"),
    ("Lead", "lead"),
    ("Marketing Qualified Lead", "marketingqualifiedlead"),
    ("Sales Qualified Lead", "salesqualifiedlead"),
    ("Opportunity", "opportunity"),
    ("Customer", "customer"),
    ("Evangelist", "evangelist"),
    ("Other", "other"),
];
const LEAD_STATUSES: &[(&str, &str)] = &[
    ("New", "NEW"),
    ("Open", "OPEN"),
    ("In Progress", "IN_PROGRESS"),
    ("Open Deal", "OPEN_DEAL"),
    ("Unqualified", "UNQUALIFIED"),
    ("Attempted to Contact", "ATTEMPTED_TO_CONTACT"),
    ("Connected", "CONNECTED"),
    ("Bad Timing", "BAD_TIMING"),
];
const INDUSTRIES: &[(&str, &str)] = &[
    ("Accounting", "ACCOUNTING"),
    ("Airlines/Aviation", "AIRLINES_AVIATION"),
    ("Computer Software", "COMPUTER_SOFTWARE"),
    ("Financial Services", "FINANCIAL_SERVICES"),
    ("Hospital & Health Care", "HOSPITAL_HEALTH_CARE"),
    ("Marketing and Advertising", "MARKETING_AND_ADVERTISING"),
    ("Retail", "RETAIL"),
    ("Telecommunications", "TELECOMMUNICATIONS"),
];
const PRIORITIES: &[(&str, &str)] = &[
    ("Low", "LOW"),
    ("Medium", "MEDIUM"),
    ("High", "HIGH"),
    ("Urgent", "URGENT"),
];
const BOOL_OPTIONS: &[(&str, &str)] = &[("Yes", "true"), ("No", "false")];
const COLOR_OPTIONS: &[(&str, &str)] = &[
    ("Red", "red"),
    ("Green", "green"),
    ("Blue", "blue"),
    ("Yellow", "yellow"),
];
const TIER_OPTIONS: &[(&str, &str)] = &[
    ("Bronze", "bronze"),
    ("Silver", "silver"),
    ("Gold", "gold"),
    ("Platinum", "platinum"),
];
const TEAMS: &[(&str, &str)] = &[
    ("178588", "West Coast Sales"),
    ("178590", "California Sales"),
    ("178592", "Support"),
];

#[derive(Clone, Copy)]
struct StageDef {
    id: &'static str,
    label: &'static str,
    metadata: &'static [(&'static str, &'static str)],
}

struct PipelineDef {
    id: &'static str,
    label: &'static str,
    /// HubSpot's default pipelines report `createdAt` = 0.
    is_default: bool,
    stages: &'static [StageDef],
}

const DEAL_PIPELINES: &[PipelineDef] = &[
    PipelineDef {
        id: "default",
        label: "Sales Pipeline",
        is_default: true,
        stages: &[
            StageDef {
                id: "appointmentscheduled",
                label: "Appointment Scheduled",
                metadata: &[("isClosed", "false"), ("probability", "0.2")],
            },
            StageDef {
                id: "qualifiedtobuy",
                label: "Qualified To Buy",
                metadata: &[("isClosed", "false"), ("probability", "0.4")],
            },
            StageDef {
                id: "presentationscheduled",
                label: "Presentation Scheduled",
                metadata: &[("isClosed", "false"), ("probability", "0.6")],
            },
            StageDef {
                id: "decisionmakerboughtin",
                label: "Decision Maker Bought-In",
                metadata: &[("isClosed", "false"), ("probability", "0.8")],
            },
            StageDef {
                id: "contractsent",
                label: "Contract Sent",
                metadata: &[("isClosed", "false"), ("probability", "0.9")],
            },
            StageDef {
                id: "closedwon",
                label: "Closed Won",
                metadata: &[("isClosed", "true"), ("probability", "1.0")],
            },
            StageDef {
                id: "closedlost",
                label: "Closed Lost",
                metadata: &[("isClosed", "true"), ("probability", "0.0")],
            },
        ],
    },
    PipelineDef {
        id: "1276549",
        label: "Renewals",
        is_default: false,
        stages: &[
            StageDef {
                id: "1276550",
                label: "Renewal Due",
                metadata: &[("isClosed", "false"), ("probability", "0.5")],
            },
            StageDef {
                id: "1276551",
                label: "Renewed",
                metadata: &[("isClosed", "true"), ("probability", "1.0")],
            },
            StageDef {
                id: "1276552",
                label: "Churned",
                metadata: &[("isClosed", "true"), ("probability", "0.0")],
            },
        ],
    },
];

const TICKET_PIPELINES: &[PipelineDef] = &[PipelineDef {
    id: "0",
    label: "Support Pipeline",
    is_default: true,
    stages: &[
        StageDef {
            id: "1",
            label: "New",
            metadata: &[("ticketState", "OPEN")],
        },
        StageDef {
            id: "2",
            label: "Waiting on contact",
            metadata: &[("ticketState", "OPEN")],
        },
        StageDef {
            id: "3",
            label: "Waiting on us",
            metadata: &[("ticketState", "OPEN")],
        },
        StageDef {
            id: "4",
            label: "Closed",
            metadata: &[("ticketState", "CLOSED")],
        },
    ],
}];

fn pipelines_of(object_type: &str) -> &'static [PipelineDef] {
    match object_type {
        "deals" => DEAL_PIPELINES,
        "tickets" => TICKET_PIPELINES,
        _ => &[],
    }
}

/// Candidates for the property that shows a touched record's version, in
/// order of preference.
const VERSIONED_PROPERTIES: &[&str] = &[
    "firstname",
    "name",
    "dealname",
    "subject",
    "hs_body_preview",
];

/// How a property's value is generated.
#[derive(Debug, Clone, Copy)]
enum Gen {
    MergedIds,
    ObjectId,
    CreateDate,
    LastModified,
    Email,
    FirstName,
    LastName,
    Phone,
    CompanyName,
    Website,
    Domain,
    City,
    State,
    Country,
    JobTitle,
    Choice,
    MultiChoice,
    Int(u64, u64),
    Money(u64),
    Calc,
    Bool,
    Date,
    DateTime,
    DateAfterCreate,
    Timestamp,
    Text,
    Body,
    OwnerId,
    DealName,
    Subject,
    DealPipeline,
    DealStage,
    TicketPipeline,
    TicketStage,
}

/// How search compares a property's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Num,
    Time,
    Text,
}

#[derive(Debug, Clone)]
struct PropDef {
    name: String,
    label: String,
    ptype: &'static str,
    field_type: &'static str,
    group: String,
    description: String,
    options: Vec<(String, String)>,
    gen: Gen,
    key: u64,
    blankable: bool,
    hubspot_defined: bool,
    calculated: bool,
    external_options: bool,
    read_only_value: bool,
    /// Shows the record's version once it has been touched.
    versioned: bool,
}

impl PropDef {
    fn kind(&self) -> Kind {
        match self.ptype {
            "number" => Kind::Num,
            "date" | "datetime" => Kind::Time,
            _ => Kind::Text,
        }
    }
}

/// One record's identity and timestamps, generated or overridden.
#[derive(Debug, Clone, Copy)]
struct Rec<'m> {
    id: u64,
    h: u64,
    created: i64,
    updated: i64,
    archived_at: Option<i64>,
    /// Times the record was touched; from 1 on, the versioned property shows it.
    version: u32,
    /// `hs_merged_object_ids` of a merge survivor.
    merged: Option<&'m str>,
}

#[derive(Debug)]
struct TypeSchema {
    name: String,
    type_key: u64,
    seed: ObjectSeed,
    owners: usize,
    props: Vec<PropDef>,
    by_name: HashMap<String, usize>,
    /// Properties returned when a request names none, sorted by name.
    defaults: Vec<usize>,
    /// String-like properties searched by a search `query`.
    searchable: Vec<usize>,
    last_modified: &'static str,
    singular: String,
    /// Changes made since start; replaced (copy on write) by each mutation,
    /// so a request works on one consistent snapshot.
    changes: Mutex<Arc<Mutations>>,
}

impl TypeSchema {
    /// The generated record at `pos` of the active (or archived) id space,
    /// without any mutation.
    fn rec(&self, seed: u64, archived: bool, pos: usize) -> Rec<'static> {
        let slot = if archived {
            (1u64 << 48) | pos as u64
        } else {
            pos as u64
        };
        let h = mix(seed ^ self.type_key ^ mix(slot));
        if archived {
            let created = BASE_MS + (mix(h ^ K_CREATED) % (3650 * DAY_MS) as u64) as i64;
            let updated = updated_after(created, h);
            let archived_at = updated + 1_000 + (mix(h ^ K_ARCHIVED) % (30 * DAY_MS) as u64) as i64;
            Rec {
                id: ARCHIVED_ID_BASE + pos as u64,
                h,
                created,
                updated,
                archived_at: Some(archived_at),
                version: 0,
                merged: None,
            }
        } else {
            let created =
                BASE_MS + pos as i64 * STEP_MS + (mix(h ^ K_CREATED) % STEP_MS as u64) as i64;
            Rec {
                id: ACTIVE_ID_BASE + pos as u64,
                h,
                created,
                updated: updated_after(created, h),
                archived_at: None,
                version: 0,
                merged: None,
            }
        }
    }

    /// Property indices for requested names (unknown names ignored), sorted
    /// by name; the default set when no names are given.
    fn select<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
        let mut sel: Vec<usize> = Vec::new();
        let mut any = false;
        for name in names {
            for part in name.split(',') {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                any = true;
                if let Some(&i) = self.by_name.get(part) {
                    sel.push(i);
                }
            }
        }
        if !any {
            return self.defaults.clone();
        }
        self.sort_dedup(sel)
    }

    /// Like `select`, but an empty request selects nothing.
    fn select_exact<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
        let sel = names
            .into_iter()
            .flat_map(|n| n.split(','))
            .filter_map(|n| self.by_name.get(n.trim()).copied())
            .collect();
        self.sort_dedup(sel)
    }

    fn sort_dedup(&self, mut sel: Vec<usize>) -> Vec<usize> {
        sel.sort_by(|a, b| self.props[*a].name.cmp(&self.props[*b].name));
        sel.dedup();
        sel
    }

    fn all_sorted(&self) -> Vec<usize> {
        self.sort_dedup((0..self.props.len()).collect())
    }
}

fn updated_after(created: i64, h: u64) -> i64 {
    let r = mix(h ^ K_UPDATED);
    let lag = if r % 5 == 0 {
        ((r >> 8) % 5_000) as i64
    } else {
        ((r >> 8) % MAX_LAG_MS as u64) as i64
    };
    let updated = created + lag;
    if (r >> 4) % 10 < 3 {
        // Rounded up to the minute: bulk updates share timestamps.
        (updated + 59_999).div_euclid(60_000) * 60_000
    } else {
        updated
    }
}

fn opts(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(l, v)| ((*l).to_string(), (*v).to_string()))
        .collect()
}

fn stage_options(pipelines: &[PipelineDef]) -> Vec<(String, String)> {
    pipelines
        .iter()
        .flat_map(|p| p.stages.iter())
        .map(|s| (s.label.to_string(), s.id.to_string()))
        .collect()
}

fn pipeline_options(pipelines: &[PipelineDef]) -> Vec<(String, String)> {
    pipelines
        .iter()
        .map(|p| (p.label.to_string(), p.id.to_string()))
        .collect()
}

struct SchemaBuilder {
    props: Vec<PropDef>,
    group: String,
}

impl SchemaBuilder {
    fn add(
        &mut self,
        name: &str,
        label: &str,
        ptype: &'static str,
        field_type: &'static str,
        gen: Gen,
    ) -> &mut PropDef {
        let always = matches!(
            gen,
            Gen::ObjectId
                | Gen::CreateDate
                | Gen::LastModified
                | Gen::DealPipeline
                | Gen::DealStage
                | Gen::TicketPipeline
                | Gen::TicketStage
                | Gen::Timestamp
        );
        let read_only = matches!(gen, Gen::ObjectId | Gen::CreateDate | Gen::LastModified);
        self.props.push(PropDef {
            name: name.to_string(),
            label: label.to_string(),
            ptype,
            field_type,
            group: self.group.clone(),
            description: format!("{label} of the record."),
            options: Vec::new(),
            gen,
            key: fnv1a(name),
            blankable: !always,
            hubspot_defined: true,
            calculated: read_only,
            external_options: false,
            read_only_value: read_only,
            versioned: false,
        });
        let last = self.props.len() - 1;
        &mut self.props[last]
    }
}

fn build_schema(
    name: &str,
    seed: ObjectSeed,
    custom: usize,
    prefix: &str,
    owners: usize,
) -> TypeSchema {
    let (group, singular) = match name {
        "contacts" => ("contactinformation".to_string(), "CONTACT".to_string()),
        "companies" => ("companyinformation".to_string(), "COMPANY".to_string()),
        "deals" => ("dealinformation".to_string(), "DEAL".to_string()),
        "tickets" => ("ticketinformation".to_string(), "TICKET".to_string()),
        other => (
            format!("{}_information", other.trim_end_matches('s')),
            other.trim_end_matches('s').to_ascii_uppercase(),
        ),
    };
    let mut b = SchemaBuilder {
        props: Vec::new(),
        group,
    };
    let last_modified;
    let default_names: &[&str];
    match name {
        "contacts" => {
            last_modified = "lastmodifieddate";
            default_names = &[
                "createdate",
                "email",
                "firstname",
                "hs_object_id",
                "lastmodifieddate",
                "lastname",
            ];
            b.add("email", "Email", "string", "text", Gen::Email);
            b.add("firstname", "First Name", "string", "text", Gen::FirstName);
            b.add("lastname", "Last Name", "string", "text", Gen::LastName);
            b.add("phone", "Phone Number", "string", "phonenumber", Gen::Phone);
            b.add(
                "company",
                "Company Name",
                "string",
                "text",
                Gen::CompanyName,
            );
            b.add("website", "Website URL", "string", "text", Gen::Website);
            b.add("city", "City", "string", "text", Gen::City);
            b.add("state", "State/Region", "string", "text", Gen::State);
            b.add("country", "Country/Region", "string", "text", Gen::Country);
            b.add("jobtitle", "Job Title", "string", "text", Gen::JobTitle);
            b.add(
                "lifecyclestage",
                "Lifecycle Stage",
                "enumeration",
                "radio",
                Gen::Choice,
            )
            .options = opts(LIFECYCLE_STAGES);
            b.add(
                "hs_lead_status",
                "Lead Status",
                "enumeration",
                "radio",
                Gen::Choice,
            )
            .options = opts(LEAD_STATUSES);
            b.add(
                "createdate",
                "Create Date",
                "datetime",
                "date",
                Gen::CreateDate,
            );
            b.add(
                "lastmodifieddate",
                "Last Modified Date",
                "datetime",
                "date",
                Gen::LastModified,
            );
            b.add(
                "hs_object_id",
                "Record ID",
                "number",
                "number",
                Gen::ObjectId,
            );
            b.add(
                "num_notes",
                "Number of Sales Activities",
                "number",
                "number",
                Gen::Int(0, 40),
            )
            .calculated = true;
            b.add(
                "hubspotscore",
                "HubSpot Score",
                "number",
                "number",
                Gen::Int(0, 100),
            )
            .calculated = true;
            b.add(
                "hs_email_optout",
                "Unsubscribed from all email",
                "bool",
                "booleancheckbox",
                Gen::Bool,
            )
            .options = opts(BOOL_OPTIONS);
        }
        "companies" => {
            last_modified = "hs_lastmodifieddate";
            default_names = &[
                "createdate",
                "domain",
                "hs_lastmodifieddate",
                "hs_object_id",
                "name",
            ];
            b.add("name", "Company name", "string", "text", Gen::CompanyName)
                .blankable = false;
            b.add(
                "domain",
                "Company Domain Name",
                "string",
                "text",
                Gen::Domain,
            );
            b.add("industry", "Industry", "enumeration", "select", Gen::Choice)
                .options = opts(INDUSTRIES);
            b.add(
                "numberofemployees",
                "Number of Employees",
                "number",
                "number",
                Gen::Int(1, 5000),
            );
            b.add(
                "annualrevenue",
                "Annual Revenue",
                "number",
                "number",
                Gen::Money(50_000_000),
            );
            b.add("city", "City", "string", "text", Gen::City);
            b.add(
                "createdate",
                "Create Date",
                "datetime",
                "date",
                Gen::CreateDate,
            );
            b.add(
                "hs_lastmodifieddate",
                "Last Modified Date",
                "datetime",
                "date",
                Gen::LastModified,
            );
            b.add(
                "hs_object_id",
                "Record ID",
                "number",
                "number",
                Gen::ObjectId,
            );
        }
        "deals" => {
            last_modified = "hs_lastmodifieddate";
            default_names = &[
                "amount",
                "closedate",
                "createdate",
                "dealname",
                "dealstage",
                "hs_lastmodifieddate",
                "hs_object_id",
                "pipeline",
            ];
            b.add("dealname", "Deal Name", "string", "text", Gen::DealName)
                .blankable = false;
            b.add("amount", "Amount", "number", "number", Gen::Money(250_000));
            b.add(
                "dealstage",
                "Deal Stage",
                "enumeration",
                "radio",
                Gen::DealStage,
            )
            .options = stage_options(DEAL_PIPELINES);
            b.add(
                "pipeline",
                "Pipeline",
                "enumeration",
                "select",
                Gen::DealPipeline,
            )
            .options = pipeline_options(DEAL_PIPELINES);
            b.add(
                "closedate",
                "Close Date",
                "datetime",
                "date",
                Gen::DateAfterCreate,
            );
            b.add(
                "createdate",
                "Create Date",
                "datetime",
                "date",
                Gen::CreateDate,
            );
            b.add(
                "hs_lastmodifieddate",
                "Last Modified Date",
                "datetime",
                "date",
                Gen::LastModified,
            );
            b.add(
                "hs_object_id",
                "Record ID",
                "number",
                "number",
                Gen::ObjectId,
            );
            b.add(
                "hubspot_owner_id",
                "Deal owner",
                "enumeration",
                "select",
                Gen::OwnerId,
            )
            .external_options = true;
        }
        "tickets" => {
            last_modified = "hs_lastmodifieddate";
            default_names = &[
                "content",
                "createdate",
                "hs_lastmodifieddate",
                "hs_object_id",
                "hs_pipeline",
                "hs_pipeline_stage",
                "hs_ticket_priority",
                "subject",
            ];
            b.add("subject", "Ticket name", "string", "text", Gen::Subject)
                .blankable = false;
            b.add(
                "content",
                "Ticket description",
                "string",
                "textarea",
                Gen::Body,
            );
            b.add(
                "hs_pipeline",
                "Pipeline",
                "enumeration",
                "select",
                Gen::TicketPipeline,
            )
            .options = pipeline_options(TICKET_PIPELINES);
            b.add(
                "hs_pipeline_stage",
                "Ticket status",
                "enumeration",
                "select",
                Gen::TicketStage,
            )
            .options = stage_options(TICKET_PIPELINES);
            b.add(
                "hs_ticket_priority",
                "Priority",
                "enumeration",
                "select",
                Gen::Choice,
            )
            .options = opts(PRIORITIES);
            b.add(
                "createdate",
                "Create Date",
                "datetime",
                "date",
                Gen::CreateDate,
            );
            b.add(
                "hs_lastmodifieddate",
                "Last Modified Date",
                "datetime",
                "date",
                Gen::LastModified,
            );
            b.add(
                "hs_object_id",
                "Record ID",
                "number",
                "number",
                Gen::ObjectId,
            );
        }
        _ => {
            last_modified = "hs_lastmodifieddate";
            default_names = &["createdate", "hs_lastmodifieddate", "hs_object_id"];
            b.add(
                "hs_timestamp",
                "Activity date",
                "datetime",
                "date",
                Gen::Timestamp,
            );
            b.add(
                "hs_body_preview",
                "Body preview",
                "string",
                "textarea",
                Gen::Body,
            );
            b.add(
                "createdate",
                "Create Date",
                "datetime",
                "date",
                Gen::CreateDate,
            );
            b.add(
                "hs_lastmodifieddate",
                "Last Modified Date",
                "datetime",
                "date",
                Gen::LastModified,
            );
            b.add(
                "hs_object_id",
                "Record ID",
                "number",
                "number",
                Gen::ObjectId,
            );
        }
    }
    // HubSpot has this on every object type: a multi-value enumeration with
    // no options, set by merges only.
    let merged = b.add(
        "hs_merged_object_ids",
        "Merged record IDs",
        "enumeration",
        "checkbox",
        Gen::MergedIds,
    );
    merged.blankable = false;
    merged.read_only_value = true;
    merged.description = "The list of record IDs that have been merged into this record. This value is set automatically by HubSpot.".to_string();
    if let Some(i) = VERSIONED_PROPERTIES
        .iter()
        .find_map(|name| b.props.iter().position(|p| p.name == *name))
    {
        b.props[i].versioned = true;
    }
    b.group = "headwater_fake".to_string();
    for c in 0..custom {
        let pname = format!("{prefix}{c}");
        let label = format!("Custom prop {c}");
        let def = match c % 11 {
            0 => b.add(&pname, &label, "date", "date", Gen::Date),
            1 => {
                let d = b.add(&pname, &label, "bool", "booleancheckbox", Gen::Bool);
                d.options = opts(BOOL_OPTIONS);
                d
            }
            2 => b.add(&pname, &label, "phone_number", "phonenumber", Gen::Phone),
            3 => {
                let d = b.add(&pname, &label, "enumeration", "checkbox", Gen::MultiChoice);
                d.options = opts(COLOR_OPTIONS);
                d
            }
            4 => {
                let d = b.add(&pname, &label, "number", "calculation_equation", Gen::Calc);
                d.calculated = true;
                d.read_only_value = true;
                d
            }
            5 => b.add(&pname, &label, "string", "textarea", Gen::Body),
            6 => b.add(&pname, &label, "datetime", "date", Gen::DateTime),
            7 => {
                let d = b.add(&pname, &label, "enumeration", "radio", Gen::Choice);
                d.options = opts(TIER_OPTIONS);
                d
            }
            8 => b.add(&pname, &label, "string", "text", Gen::Text),
            9 => b.add(&pname, &label, "number", "number", Gen::Money(10_000)),
            _ => {
                let d = b.add(&pname, &label, "enumeration", "select", Gen::Choice);
                d.options = opts(TIER_OPTIONS);
                d
            }
        };
        def.hubspot_defined = false;
        def.description = format!("Custom property {c} created by the headwater fake.");
    }
    let props = b.props;
    let by_name: HashMap<String, usize> = props
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), i))
        .collect();
    let searchable = props
        .iter()
        .enumerate()
        .filter(|(_, p)| p.hubspot_defined && p.ptype == "string")
        .map(|(i, _)| i)
        .collect();
    let mut schema = TypeSchema {
        name: name.to_string(),
        type_key: mix(fnv1a(name)),
        seed,
        owners,
        props,
        by_name,
        defaults: Vec::new(),
        searchable,
        last_modified,
        singular,
        changes: Mutex::default(),
    };
    schema.defaults = schema.select_exact(default_names.iter().copied());
    schema
}

/// Appends the raw value of `def` for `rec` to `out`; false means `null`.
fn gen_value(schema: &TypeSchema, def: &PropDef, rec: &Rec<'_>, out: &mut String) -> bool {
    if !def.versioned || rec.version == 0 {
        return gen_base(schema, def, rec, out);
    }
    let start = out.len();
    if gen_base(schema, def, rec, out) && out.len() > start {
        out.push(' ');
    }
    let _ = write!(out, "(v{})", rec.version);
    true
}

/// The value of `def` for `rec` as generated, before any touch.
fn gen_base(schema: &TypeSchema, def: &PropDef, rec: &Rec<'_>, out: &mut String) -> bool {
    if let Gen::MergedIds = def.gen {
        return match rec.merged {
            Some(ids) => {
                out.push_str(ids);
                true
            }
            None => false,
        };
    }
    let h = mix(rec.h ^ def.key);
    if def.blankable {
        match h % 100 {
            0..=5 => return false,
            6..=8 => return true,
            _ => {}
        }
    }
    let r = mix(h);
    match def.gen {
        Gen::ObjectId => {
            let _ = write!(out, "{}", rec.id);
        }
        Gen::CreateDate => push_iso(out, rec.created),
        Gen::LastModified => push_iso(out, rec.updated),
        Gen::Email => {
            let first = pick(FIRST_NAMES, mix(mix(rec.h ^ K_FIRST)));
            let last = pick(LAST_NAMES, mix(mix(rec.h ^ K_LAST)));
            ascii_slug(out, first);
            out.push('.');
            ascii_slug(out, last);
            let _ = write!(out, "{}@{}", rec.id, pick(EMAIL_DOMAINS, r));
        }
        Gen::FirstName => out.push_str(pick(FIRST_NAMES, mix(mix(rec.h ^ K_FIRST)))),
        Gen::LastName => out.push_str(pick(LAST_NAMES, mix(mix(rec.h ^ K_LAST)))),
        Gen::Phone => {
            let _ = write!(
                out,
                "+1 {}-555-{:04}",
                pick(AREA_CODES, r),
                (r >> 16) % 10_000
            );
        }
        Gen::CompanyName => push_company(out, rec),
        Gen::Website => {
            out.push_str("https://www.");
            push_domain(out, rec);
        }
        Gen::Domain => push_domain(out, rec),
        Gen::City => out.push_str(pick(LOCATIONS, mix(rec.h ^ K_LOCATION)).0),
        Gen::State => out.push_str(pick(LOCATIONS, mix(rec.h ^ K_LOCATION)).1),
        Gen::Country => out.push_str(pick(LOCATIONS, mix(rec.h ^ K_LOCATION)).2),
        Gen::JobTitle => out.push_str(pick(JOB_TITLES, r)),
        Gen::Choice => match def.options.len() {
            0 => return false,
            n => out.push_str(&def.options[(r % n as u64) as usize].1),
        },
        Gen::MultiChoice => {
            let mask = 1 + r % 15;
            let mut first = true;
            for (i, (_, value)) in def.options.iter().enumerate().take(4) {
                if mask & (1 << i) != 0 {
                    if !first {
                        out.push(';');
                    }
                    out.push_str(value);
                    first = false;
                }
            }
        }
        Gen::Int(lo, hi) => {
            let _ = write!(out, "{}", lo + r % (hi - lo + 1));
        }
        Gen::Money(max) => {
            let cents = r % (max * 100);
            let (whole, frac) = (cents / 100, cents % 100);
            let _ = match (frac, frac % 10) {
                (0, _) => write!(out, "{whole}"),
                (_, 0) => write!(out, "{whole}.{}", frac / 10),
                _ => write!(out, "{whole}.{frac:02}"),
            };
        }
        Gen::Calc => {
            let _ = write!(out, "{}", (rec.id % 97) as f64 * 1.5);
        }
        Gen::Bool => out.push_str(if r % 3 == 0 { "true" } else { "false" }),
        Gen::Date => push_date(out, BASE_MS + (r % 3650) as i64 * DAY_MS),
        Gen::DateTime => push_iso(out, BASE_MS + (r % (3650 * DAY_MS) as u64) as i64),
        Gen::DateAfterCreate => push_iso(out, rec.created + (r % (180 * DAY_MS) as u64) as i64),
        Gen::Timestamp => push_iso(out, rec.created - (r % DAY_MS as u64) as i64),
        Gen::Text => {
            let n = 1 + r % 4;
            let mut x = r;
            for w in 0..n {
                x = mix(x);
                if w > 0 {
                    out.push(' ');
                }
                out.push_str(pick(WORDS, x));
            }
        }
        Gen::Body => push_body(out, r),
        Gen::OwnerId => {
            if schema.owners == 0 {
                return false;
            }
            let _ = write!(out, "{}", OWNER_ID_BASE + r % schema.owners as u64);
        }
        Gen::DealName => {
            push_company(out, rec);
            out.push_str(" - ");
            out.push_str(pick(PRODUCTS, r));
        }
        Gen::Subject => out.push_str(pick(SUBJECTS, r)),
        Gen::DealPipeline => out.push_str(deal_pipeline(rec).id),
        Gen::DealStage => {
            let p = deal_pipeline(rec);
            out.push_str(pick(p.stages, mix(rec.h ^ K_STAGE)).id);
        }
        Gen::TicketPipeline => out.push_str(TICKET_PIPELINES[0].id),
        Gen::TicketStage => out.push_str(pick(TICKET_PIPELINES[0].stages, mix(rec.h ^ K_STAGE)).id),
        Gen::MergedIds => return false,
    }
    true
}

fn deal_pipeline(rec: &Rec<'_>) -> &'static PipelineDef {
    if mix(rec.h ^ K_PIPELINE) % 5 == 4 {
        &DEAL_PIPELINES[1]
    } else {
        &DEAL_PIPELINES[0]
    }
}

fn push_company(out: &mut String, rec: &Rec<'_>) {
    let h = mix(rec.h ^ K_COMPANY);
    out.push_str(pick(COMPANY_A, h));
    out.push(' ');
    out.push_str(pick(COMPANY_B, h >> 16));
}

fn push_domain(out: &mut String, rec: &Rec<'_>) {
    let h = mix(rec.h ^ K_COMPANY);
    ascii_slug(out, pick(COMPANY_A, h));
    ascii_slug(out, pick(COMPANY_B, h >> 16));
    out.push_str(".example.com");
}

fn push_body(out: &mut String, r: u64) {
    let n = 4 + r % 14;
    let mut x = r;
    for w in 0..n {
        x = mix(x);
        if w > 0 {
            out.push(' ');
        }
        out.push_str(pick(WORDS, x));
    }
    match (r >> 20) % 10 {
        0 => out.push_str(" \"quoted\" text."),
        1 => out.push_str(".\nSecond line\tindented."),
        2 => out.push_str(" ✓ résumé naïve 🚀."),
        3 => out.push_str(" C:\\path\\file."),
        _ => out.push('.'),
    }
}

// ---------------------------------------------------------------------------
// Server state
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Fault {
    status: u16,
    retry_after: Option<u64>,
}

#[derive(Debug)]
struct AccessToken {
    expires_at: Instant,
    scopes: Vec<String>,
}

#[derive(Default)]
struct State {
    rate_limit: Option<FakeRateLimit>,
    search_rate_limit: Option<FakeRateLimit>,
    windows: HashMap<String, VecDeque<Instant>>,
    search_windows: HashMap<String, VecDeque<Instant>>,
    daily: HashMap<String, u64>,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, Vec<String>>,
    codes: HashMap<String, Vec<String>>,
    faults: VecDeque<Fault>,
    token_faults: VecDeque<Fault>,
    malformed: HashSet<(String, usize)>,
    bad: HashMap<(String, usize), super::BadRecord>,
    repeat: HashMap<String, usize>,
    /// Object types whose live listing answers without `paging` from this
    /// page on.
    drop_paging: HashMap<String, usize>,
    per_path: BTreeMap<String, u64>,
    /// Association batch reads still to answer with a failed input.
    association_faults: usize,
    /// Input counts of the association batch reads served.
    association_batches: Vec<usize>,
}

/// Cached result of one search query: the first matches in sort order.
struct SearchHits {
    total: usize,
    top: Vec<usize>,
}

/// Ids of active records stay below this.
const MAX_ACTIVE: usize = (ARCHIVED_ID_BASE - ACTIVE_ID_BASE) as usize;

/// What became of an active record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Active,
    /// Archived at this time (epoch millis).
    Archived(i64),
    /// Merged into the record at this active position.
    Merged(usize),
}

/// The stored state of one changed (or added) active record.
#[derive(Debug, Clone)]
struct Override {
    /// `createdAt` of an added record (generated records keep theirs).
    created: Option<i64>,
    updated: i64,
    version: u32,
    /// `hs_merged_object_ids`, `;`-separated.
    merged_ids: Option<String>,
    life: Life,
}

impl Override {
    fn apply<'m>(&'m self, rec: &mut Rec<'m>) {
        if let Some(created) = self.created {
            rec.created = created;
        }
        rec.updated = self.updated;
        rec.version = self.version;
        rec.merged = self.merged_ids.as_deref();
        if let Life::Archived(at) = self.life {
            rec.archived_at = Some(at);
        }
    }
}

/// Changes made to one object type since start. Only changed records are
/// stored; all others are generated.
#[derive(Debug, Clone, Default)]
struct Mutations {
    /// Distinguishes snapshots (search-cache keys); 0 before any change.
    generation: u64,
    /// Active records appended by `add`, at positions from `seed.count` on.
    added: usize,
    /// Every changed or added active record, by position.
    overrides: BTreeMap<usize, Override>,
    /// Positions of archived active records (the `archived=true` listing
    /// serves them before the generated archived records).
    archived: BTreeSet<usize>,
}

impl Mutations {
    fn population(&self, schema: &TypeSchema) -> usize {
        schema.seed.count + self.added
    }

    fn life(&self, pos: usize) -> Life {
        self.overrides.get(&pos).map_or(Life::Active, |o| o.life)
    }

    /// Panics unless `pos` is an active record.
    fn check_active(&self, schema: &TypeSchema, pos: usize, what: &str) {
        let population = self.population(schema);
        assert!(
            pos < population,
            "HubSpotFake::{what}: {} index {pos} is out of range (0..{population})",
            schema.name
        );
        let life = self.life(pos);
        assert!(
            life == Life::Active,
            "HubSpotFake::{what}: {} index {pos} (id {}) is not active: {life:?}",
            schema.name,
            ACTIVE_ID_BASE + pos as u64
        );
    }

    /// The override of `pos`, created from the generated record if needed.
    fn entry(&mut self, schema: &TypeSchema, seed: u64, pos: usize) -> &mut Override {
        self.overrides.entry(pos).or_insert_with(|| Override {
            created: None,
            updated: schema.rec(seed, false, pos).updated,
            version: 0,
            merged_ids: None,
            life: Life::Active,
        })
    }
}

/// One object type as a request (or a truth helper) sees it: the schema and
/// a snapshot of its changes.
struct View<'a> {
    schema: &'a TypeSchema,
    muts: &'a Mutations,
    seed: u64,
}

impl<'a> View<'a> {
    /// Active positions in use (live or not): `0..population`.
    fn population(&self) -> usize {
        self.muts.population(self.schema)
    }

    fn is_active(&self, pos: usize) -> bool {
        pos < self.population() && self.muts.life(pos) == Life::Active
    }

    /// The record at `pos` of the active (or archived) id space, with its
    /// changes.
    fn rec(&self, archived: bool, pos: usize) -> Rec<'a> {
        let mut rec = self.schema.rec(self.seed, archived, pos);
        if !archived {
            if let Some(o) = self.muts.overrides.get(&pos) {
                o.apply(&mut rec);
            }
        }
        rec
    }

    /// `(archived id space, position, life)` of an id that exists or existed.
    /// Records of the archived id space are always `Life::Archived`.
    fn locate(&self, id: u64) -> Option<(bool, usize, Life)> {
        if id >= ARCHIVED_ID_BASE {
            let pos = usize::try_from(id - ARCHIVED_ID_BASE).ok()?;
            (pos < self.schema.seed.archived).then(|| {
                let at = self.schema.rec(self.seed, true, pos).archived_at;
                (true, pos, Life::Archived(at.unwrap_or_default()))
            })
        } else if id >= ACTIVE_ID_BASE {
            let pos = usize::try_from(id - ACTIVE_ID_BASE).ok()?;
            (pos < self.population()).then(|| (false, pos, self.muts.life(pos)))
        } else {
            None
        }
    }

    /// The end of the merge chain that starts at `pos`.
    fn survivor(&self, mut pos: usize) -> usize {
        while let Life::Merged(next) = self.muts.life(pos) {
            pos = next;
        }
        pos
    }

    /// The first active position at or after `from`.
    fn next_active(&self, from: usize) -> Option<usize> {
        let population = self.population();
        let mut pos = from;
        if self.muts.overrides.is_empty() {
            return (pos < population).then_some(pos);
        }
        for (&p, o) in self.muts.overrides.range(from..) {
            if p > pos {
                break;
            }
            if o.life == Life::Active {
                break;
            }
            pos = p + 1;
        }
        (pos < population).then_some(pos)
    }
}

/// The portals one server serves, and which portal issued which token.
struct Hub {
    portals: Vec<Arc<Inner>>,
    /// Private-app tokens by portal.
    private: HashMap<String, usize>,
    /// Tokens and codes the portals minted, by portal (shared with them).
    minted: Arc<Mutex<HashMap<String, usize>>>,
}

impl Hub {
    fn new(configs: Vec<FakeConfig>, uri: String) -> Hub {
        let minted = Arc::new(Mutex::new(HashMap::new()));
        let mut private = HashMap::new();
        let mut hub_ids = HashSet::new();
        for (i, cfg) in configs.iter().enumerate() {
            assert!(
                hub_ids.insert(cfg.hub_id),
                "HubSpotFake::start_portals: portals share hub id {}",
                cfg.hub_id
            );
            for token in &cfg.private_app_tokens {
                if let Some(other) = private.insert(token.clone(), i) {
                    panic!(
                        "HubSpotFake::start_portals: portals {other} and {i} share a private-app token"
                    );
                }
            }
        }
        let portals = configs
            .into_iter()
            .enumerate()
            .map(|(i, cfg)| Arc::new(Inner::new(cfg, uri.clone(), i, Arc::clone(&minted))))
            .collect();
        Hub {
            portals,
            private,
            minted,
        }
    }

    /// The portal that issued `token`.
    fn owner(&self, token: &str) -> Option<usize> {
        self.private.get(token).copied().or_else(|| {
            self.minted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(token)
                .copied()
        })
    }

    /// The portal a request belongs to (portal 0 when none claims it).
    fn portal_of(&self, req: &Request) -> &Arc<Inner> {
        if self.portals.len() == 1 {
            return &self.portals[0];
        }
        let segs: Vec<&str> = req
            .url
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let owner = match Route::parse(req.method.as_str(), &segs) {
            Route::Token => {
                let form: HashMap<String, String> = url::form_urlencoded::parse(&req.body)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                ["refresh_token", "code"]
                    .iter()
                    .find_map(|k| form.get(*k).and_then(|t| self.owner(t)))
            }
            Route::AccessTokenInfo(tok)
            | Route::RefreshTokenInfo(tok)
            | Route::RefreshTokenDelete(tok) => self.owner(tok),
            _ => bearer(req).and_then(|t| self.owner(t)),
        };
        &self.portals[owner.unwrap_or(0)]
    }
}

/// Pairs of object types the fake associates, in the direction the
/// generated associations are keyed by.
const ASSOCIATED_PAIRS: [(&str, &str); 6] = [
    ("contacts", "companies"),
    ("contacts", "deals"),
    ("companies", "deals"),
    ("deals", "tickets"),
    ("contacts", "tickets"),
    ("companies", "tickets"),
];
/// Most inputs of one association batch read (HubSpot changelog "Batch
/// Read Limit for HubSpot Associations API", February 2025).
const ASSOCIATION_BATCH_MAX: usize = 1000;
/// Associations per result page (the per-object list's documented limit).
const ASSOCIATION_PAGE: usize = 500;
/// Record 0 of a pair's first type is associated with this many records.
const HUB_ASSOCIATIONS: usize = 1200;

/// `(unlabeled, Primary, user-defined)` association type ids from `from`
/// to `to` (HubSpot's defaults; the user-defined one is the fake's).
fn association_type_ids(from: &str, to: &str) -> (u32, Option<u32>, Option<u32>) {
    match (from, to) {
        ("contacts", "companies") => (279, Some(1), None),
        ("companies", "contacts") => (280, Some(2), None),
        ("deals", "contacts") => (3, None, Some(102)),
        ("contacts", "deals") => (4, None, Some(101)),
        ("deals", "companies") => (341, Some(5), None),
        ("companies", "deals") => (342, Some(6), None),
        ("contacts", "tickets") => (15, None, None),
        ("tickets", "contacts") => (16, None, None),
        ("tickets", "companies") => (339, Some(26), None),
        ("companies", "tickets") => (340, Some(25), None),
        ("deals", "tickets") => (27, None, None),
        ("tickets", "deals") => (28, None, None),
        _ => (1, None, None),
    }
}

/// Adjacency of generated records in compressed rows: the neighbours of
/// position `i` are `targets[offsets[i]..offsets[i + 1]]`, ascending.
#[derive(Debug, Default)]
struct Adjacency {
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Adjacency {
    fn get(&self, pos: usize) -> &[u32] {
        match (self.offsets.get(pos), self.offsets.get(pos + 1)) {
            (Some(&lo), Some(&hi)) => &self.targets[lo as usize..hi as usize],
            _ => &[],
        }
    }

    /// Rows from `(row, target)` pairs sorted by row then target.
    fn from_sorted(rows: usize, edges: &[(u32, u32)]) -> Adjacency {
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut k = 0;
        for row in 0..rows {
            offsets.push(k as u32);
            while k < edges.len() && edges[k].0 as usize == row {
                k += 1;
            }
        }
        offsets.push(k as u32);
        Adjacency {
            offsets,
            targets: edges.iter().map(|e| e.1).collect(),
        }
    }
}

/// The generated associations of one pair, both ways.
#[derive(Debug)]
struct PairIndex {
    forward: Adjacency,
    reverse: Adjacency,
}

/// Associations changed by tests, as `(a position, b position)`.
#[derive(Debug, Default)]
struct PairMuts {
    added: BTreeSet<(usize, usize)>,
    /// `added` as `(b, a)`.
    added_rev: BTreeSet<(usize, usize)>,
    removed: BTreeSet<(usize, usize)>,
}

/// One associated pair of types `a`–`b`: generated on first use (a fake
/// whose associations are never read pays nothing), plus changes.
#[derive(Debug)]
struct AssocPair {
    a: &'static str,
    b: &'static str,
    key: u64,
    index: std::sync::OnceLock<PairIndex>,
    muts: Mutex<PairMuts>,
}

impl AssocPair {
    fn new(a: &'static str, b: &'static str) -> AssocPair {
        AssocPair {
            a,
            b,
            key: fnv1a(a) ^ fnv1a(b).rotate_left(29) ^ fnv1a("@associations"),
            index: std::sync::OnceLock::new(),
            muts: Mutex::new(PairMuts::default()),
        }
    }

    fn muts(&self) -> MutexGuard<'_, PairMuts> {
        self.muts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The generated associations between the `na` generated records of `a`
    /// and the `nb` of `b`.
    fn index(&self, seed: u64, na: usize, nb: usize) -> &PairIndex {
        self.index.get_or_init(|| {
            let mut edges: Vec<(u32, u32)> = Vec::new();
            if nb > 0 {
                for x in 0..na {
                    if x == 0 {
                        edges.extend((0..nb.min(HUB_ASSOCIATIONS)).map(|y| (0, y as u32)));
                        continue;
                    }
                    let h = mix(seed ^ self.key ^ mix(x as u64));
                    let start = edges.len();
                    for j in 0..h % 4 {
                        let y = mix(h ^ (j + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) % nb as u64;
                        edges.push((x as u32, y as u32));
                    }
                    edges[start..].sort_unstable();
                    let mut tail: Vec<(u32, u32)> = edges.drain(start..).collect();
                    tail.dedup();
                    edges.extend(tail);
                }
            }
            let forward = Adjacency::from_sorted(na, &edges);
            let mut rev: Vec<(u32, u32)> = edges.iter().map(|&(x, y)| (y, x)).collect();
            rev.sort_unstable();
            let reverse = Adjacency::from_sorted(nb, &rev);
            PairIndex { forward, reverse }
        })
    }
}

/// An associated pair seen from one of its types.
struct Side<'a> {
    pair: &'a AssocPair,
    /// True when `from` is the pair's `a`.
    forward: bool,
    from: &'a TypeSchema,
    to: &'a TypeSchema,
}

struct Inner {
    uri: String,
    /// This portal's index in its [`Hub`].
    portal: usize,
    /// The hub's record of minted tokens (see [`Hub::minted`]).
    minted: Arc<Mutex<HashMap<String, usize>>>,
    cfg: FakeConfig,
    schemas: HashMap<String, Arc<TypeSchema>>,
    /// The associated pairs of configured types, in their canonical order.
    pairs: Vec<AssocPair>,
    state: Mutex<State>,
    search_cache: Mutex<VecDeque<(String, Arc<SearchHits>)>>,
    /// Source of `Mutations::generation`.
    generation: AtomicU64,
    latency_nanos: AtomicU64,
    requests: AtomicU64,
    rate_limited: AtomicU64,
    token_refreshes: AtomicU64,
    code_exchanges: AtomicU64,
    token_requests: AtomicU64,
    max_in_window: AtomicU32,
    /// The hostile mode ([`HubSpotFake::set_hostility`]).
    hostile: HostileSwitch,
}

struct Responder(Arc<Hub>);

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.portal_of(request).handle(request)
    }
}

/// A response under construction.
struct Reply {
    status: u16,
    body: Option<String>,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(status: u16, body: String) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    fn value(status: u16, value: &Value) -> Self {
        Self::json(status, value.to_string())
    }

    fn empty(status: u16) -> Self {
        Self {
            status,
            body: None,
            headers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Policy {
    TenSecondly,
    Secondly,
    Daily,
}

/// Identity of the caller, for rate limiting.
struct Caller {
    key: String,
    private_app: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    List(&'a str),
    Get(&'a str),
    BatchRead(&'a str),
    Search(&'a str),
    Properties(&'a str),
    Property(&'a str, &'a str),
    Owners,
    Owner(&'a str),
    Pipelines(&'a str),
    Pipeline(&'a str, &'a str),
    PipelineStages(&'a str, &'a str),
    Token,
    AccessTokenInfo(&'a str),
    RefreshTokenInfo(&'a str),
    RefreshTokenDelete(&'a str),
    AccountDetails,
    AssocBatchRead(&'a str, &'a str),
    AssocList(&'a str, &'a str, &'a str),
    NotFound,
}

impl<'a> Route<'a> {
    fn parse(method: &str, segs: &[&'a str]) -> Route<'a> {
        match (method, segs) {
            ("GET", ["crm", "v3", "objects", t]) => Route::List(t),
            ("GET", ["crm", "v3", "objects", t, _id]) => Route::Get(t),
            ("POST", ["crm", "v3", "objects", t, "batch", "read"]) => Route::BatchRead(t),
            ("POST", ["crm", "v3", "objects", t, "search"]) => Route::Search(t),
            ("GET", ["crm", "v3", "properties", t]) => Route::Properties(t),
            ("GET", ["crm", "v3", "properties", t, name]) => Route::Property(t, name),
            ("GET", ["crm", "v3", "owners"]) => Route::Owners,
            ("GET", ["crm", "v3", "owners", id]) => Route::Owner(id),
            ("GET", ["crm", "v3", "pipelines", t]) => Route::Pipelines(t),
            ("GET", ["crm", "v3", "pipelines", t, id]) => Route::Pipeline(t, id),
            ("GET", ["crm", "v3", "pipelines", t, id, "stages"]) => Route::PipelineStages(t, id),
            ("POST", ["oauth", "v1", "token"]) => Route::Token,
            ("GET", ["oauth", "v1", "access-tokens", tok]) => Route::AccessTokenInfo(tok),
            ("GET", ["oauth", "v1", "refresh-tokens", tok]) => Route::RefreshTokenInfo(tok),
            ("DELETE", ["oauth", "v1", "refresh-tokens", tok]) => Route::RefreshTokenDelete(tok),
            ("GET", ["account-info", "v3", "details"]) => Route::AccountDetails,
            ("POST", ["crm", "v4", "associations", f, t, "batch", "read"]) => {
                Route::AssocBatchRead(f, t)
            }
            ("GET", ["crm", "v4", "objects", f, id, "associations", t]) => {
                Route::AssocList(f, id, t)
            }
            _ => Route::NotFound,
        }
    }

    fn label(&self, method: &str, path: &str) -> String {
        match self {
            Route::List(t) => format!("GET /crm/v3/objects/{t}"),
            Route::Get(t) => format!("GET /crm/v3/objects/{t}/{{id}}"),
            Route::BatchRead(t) => format!("POST /crm/v3/objects/{t}/batch/read"),
            Route::Search(t) => format!("POST /crm/v3/objects/{t}/search"),
            Route::Properties(t) => format!("GET /crm/v3/properties/{t}"),
            Route::Property(t, _) => format!("GET /crm/v3/properties/{t}/{{name}}"),
            Route::Owners => "GET /crm/v3/owners".to_string(),
            Route::Owner(_) => "GET /crm/v3/owners/{id}".to_string(),
            Route::Pipelines(t) => format!("GET /crm/v3/pipelines/{t}"),
            Route::Pipeline(t, _) => format!("GET /crm/v3/pipelines/{t}/{{id}}"),
            Route::PipelineStages(t, _) => format!("GET /crm/v3/pipelines/{t}/{{id}}/stages"),
            Route::Token => "POST /oauth/v1/token".to_string(),
            Route::AccessTokenInfo(_) => "GET /oauth/v1/access-tokens/{token}".to_string(),
            Route::RefreshTokenInfo(_) => "GET /oauth/v1/refresh-tokens/{token}".to_string(),
            Route::RefreshTokenDelete(_) => "DELETE /oauth/v1/refresh-tokens/{token}".to_string(),
            Route::AccountDetails => "GET /account-info/v3/details".to_string(),
            Route::AssocBatchRead(f, t) => format!("POST /crm/v4/associations/{f}/{t}/batch/read"),
            Route::AssocList(f, _, t) => {
                format!("GET /crm/v4/objects/{f}/{{id}}/associations/{t}")
            }
            Route::NotFound => format!("{method} {path}"),
        }
    }
}

/// Query parameters of a request, decoded.
struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    fn new(url: &'a Url) -> Self {
        Self {
            pairs: url.query_pairs().collect(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    fn all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Total raw (still percent-encoded) length of the `properties` query values.
fn raw_properties_len(url: &Url) -> usize {
    url.query()
        .map(|q| {
            q.split('&')
                .filter_map(|pair| pair.split_once('='))
                .filter(|(k, _)| *k == "properties")
                .map(|(_, v)| v.len())
                .sum()
        })
        .unwrap_or(0)
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn prune(window: &mut VecDeque<Instant>, now: Instant, limit: FakeRateLimit) {
    if let Some(cut) = now.checked_sub(limit.window) {
        while window.front().is_some_and(|t| *t <= cut) {
            window.pop_front();
        }
    }
    while window.len() > limit.max as usize {
        window.pop_front();
    }
}

impl Inner {
    fn new(
        cfg: FakeConfig,
        uri: String,
        portal: usize,
        minted: Arc<Mutex<HashMap<String, usize>>>,
    ) -> Self {
        let schemas: HashMap<String, Arc<TypeSchema>> = cfg
            .objects
            .iter()
            .map(|(name, seed)| {
                let name = name.to_ascii_lowercase();
                let schema = build_schema(
                    &name,
                    *seed,
                    cfg.custom_properties,
                    &cfg.custom_property_prefix,
                    cfg.owners,
                );
                (name, Arc::new(schema))
            })
            .collect();
        let state = State {
            rate_limit: cfg.rate_limit,
            search_rate_limit: cfg.search_rate_limit,
            ..State::default()
        };
        let pairs = ASSOCIATED_PAIRS
            .iter()
            .filter(|(a, b)| {
                let has = |t: &str| schemas.contains_key(t);
                has(a) && has(b)
            })
            .map(|&(a, b)| AssocPair::new(a, b))
            .collect();
        let latency = u64::try_from(cfg.latency.as_nanos()).unwrap_or(u64::MAX);
        Self {
            uri,
            portal,
            minted,
            schemas,
            pairs,
            state: Mutex::new(state),
            search_cache: Mutex::new(VecDeque::new()),
            generation: AtomicU64::new(0),
            latency_nanos: AtomicU64::new(latency),
            requests: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            token_refreshes: AtomicU64::new(0),
            code_exchanges: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            max_in_window: AtomicU32::new(0),
            hostile: HostileSwitch::default(),
            cfg,
        }
    }

    /// Records that this portal issued `token` (a minted token or code).
    fn register(&self, token: &str) {
        self.minted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), self.portal);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(AtomicOrdering::Relaxed))
    }

    fn canonical(&self, object_type: &str) -> String {
        let lower = object_type.to_ascii_lowercase();
        let alias = match lower.as_str() {
            "contact" | "0-1" => "contacts",
            "company" | "0-2" => "companies",
            "deal" | "0-3" => "deals",
            "ticket" | "0-5" => "tickets",
            "call" | "0-48" => "calls",
            "note" | "0-46" => "notes",
            "email" | "0-49" => "emails",
            "meeting" | "0-47" => "meetings",
            "task" | "0-27" => "tasks",
            _ => return lower,
        };
        alias.to_string()
    }

    fn resolve(&self, object_type: &str) -> Option<&Arc<TypeSchema>> {
        self.schemas
            .get(object_type)
            .or_else(|| self.schemas.get(&self.canonical(object_type)))
    }

    /// The current changes of `schema`'s type.
    fn snapshot(&self, schema: &TypeSchema) -> Arc<Mutations> {
        Arc::clone(&schema.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn view<'a>(&self, schema: &'a TypeSchema, muts: &'a Mutations) -> View<'a> {
        View {
            schema,
            muts,
            seed: self.cfg.seed,
        }
    }

    /// Applies one change to the type `object_type` and drops the type's
    /// cached searches. Panics when the type is unknown; `change` must
    /// validate (and panic) before it changes anything.
    fn mutate<R>(
        &self,
        object_type: &str,
        change: impl FnOnce(&TypeSchema, u64, &mut Mutations) -> R,
    ) -> R {
        let Some(schema) = self.resolve(object_type) else {
            panic!("HubSpotFake: unknown object type '{object_type}'");
        };
        let result = {
            let mut current = schema.changes.lock().unwrap_or_else(|e| e.into_inner());
            // Copies the changes only while a request still reads them.
            let muts = Arc::make_mut(&mut current);
            let result = change(schema, self.cfg.seed, muts);
            muts.generation = self.generation.fetch_add(1, AtomicOrdering::Relaxed) + 1;
            result
        };
        let prefix = format!("{}|", schema.name);
        self.search_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(key, _)| !key.starts_with(&prefix));
        result
    }

    fn record_value(&self, schema: &TypeSchema, rec: &Rec<'_>) -> Value {
        let mut w = RecordWriter::new(self, schema, schema.all_sorted(), Vec::new());
        let mut out = String::new();
        w.write(&mut out, rec, false);
        serde_json::from_str(&out).unwrap_or(Value::Null)
    }

    // ----- associations -----

    /// The pair `from`–`to` seen from `from`, if the fake associates them.
    fn assoc_side(&self, from_type: &str, to_type: &str) -> Option<Side<'_>> {
        let from = self.resolve(from_type)?;
        let to = self.resolve(to_type)?;
        self.pairs.iter().find_map(|pair| {
            if pair.a == from.name && pair.b == to.name {
                Some(Side {
                    pair,
                    forward: true,
                    from,
                    to,
                })
            } else if pair.a == to.name && pair.b == from.name {
                Some(Side {
                    pair,
                    forward: false,
                    from,
                    to,
                })
            } else {
                None
            }
        })
    }

    /// The active records of the other type associated with active position
    /// `pos` of `side.from`, ascending, each with whether the seed made the
    /// association (else a test did, and it has only the unlabeled type).
    fn neighbours(&self, side: &Side<'_>, pos: usize, to: &View<'_>) -> Vec<(usize, bool)> {
        let pair = side.pair;
        let (na, nb) = if side.forward {
            (side.from.seed.count, side.to.seed.count)
        } else {
            (side.to.seed.count, side.from.seed.count)
        };
        let index = pair.index(self.cfg.seed, na, nb);
        let muts = pair.muts();
        let generated: &[u32] = if side.forward {
            index.forward.get(pos)
        } else {
            index.reverse.get(pos)
        };
        let edge = |other: usize| {
            if side.forward {
                (pos, other)
            } else {
                (other, pos)
            }
        };
        let mut out: Vec<(usize, bool)> = generated
            .iter()
            .map(|&o| o as usize)
            .filter(|&o| !muts.removed.contains(&edge(o)))
            .map(|o| (o, !muts.added.contains(&edge(o))))
            .collect();
        let added: Vec<usize> = if side.forward {
            muts.added
                .range((pos, 0)..=(pos, usize::MAX))
                .map(|&(_, b)| b)
                .collect()
        } else {
            muts.added_rev
                .range((pos, 0)..=(pos, usize::MAX))
                .map(|&(_, a)| a)
                .collect()
        };
        for o in added {
            if !out.iter().any(|&(x, _)| x == o) {
                out.push((o, false));
            }
        }
        drop(muts);
        out.retain(|&(o, _)| to.is_active(o));
        out.sort_unstable();
        out
    }

    fn change_association(
        &self,
        from_type: &str,
        from_index: usize,
        to_type: &str,
        to_index: usize,
        add: bool,
    ) -> bool {
        let what = if add { "associate" } else { "dissociate" };
        let Some(side) = self.assoc_side(from_type, to_type) else {
            panic!("HubSpotFake::{what}: {from_type} and {to_type} are not an associated pair");
        };
        self.snapshot(side.from)
            .check_active(side.from, from_index, what);
        self.snapshot(side.to).check_active(side.to, to_index, what);
        let (mt, to) = (self.snapshot(side.to), side.to);
        let view = self.view(to, &mt);
        let present = self
            .neighbours(&side, from_index, &view)
            .iter()
            .any(|&(o, _)| o == to_index);
        let edge = if side.forward {
            (from_index, to_index)
        } else {
            (to_index, from_index)
        };
        let mut muts = side.pair.muts();
        match (add, present) {
            (true, false) => {
                muts.removed.remove(&edge);
                muts.added.insert(edge);
                muts.added_rev.insert((edge.1, edge.0));
                true
            }
            (false, true) => {
                muts.added.remove(&edge);
                muts.added_rev.remove(&(edge.1, edge.0));
                muts.removed.insert(edge);
                true
            }
            _ => false,
        }
    }

    /// The `associationTypes` of one association, seen from `side.from`.
    fn association_types(&self, side: &Side<'_>, from: usize, to: usize, generated: bool) -> Value {
        let (a, b) = if side.forward { (from, to) } else { (to, from) };
        let (unlabeled, primary, user) = association_type_ids(&side.from.name, &side.to.name);
        let mut types =
            vec![json!({"category": "HUBSPOT_DEFINED", "typeId": unlabeled, "label": null})];
        if generated {
            let h =
                mix(self.cfg.seed ^ side.pair.key ^ mix(a as u64) ^ mix(b as u64).rotate_left(17));
            if let Some(primary) = primary.filter(|_| h % 5 == 0) {
                types.push(
                    json!({"category": "HUBSPOT_DEFINED", "typeId": primary, "label": "Primary"}),
                );
            }
            if let Some(user) = user.filter(|_| (h >> 8) % 4 == 0) {
                types.push(
                    json!({"category": "USER_DEFINED", "typeId": user, "label": "Decision maker"}),
                );
            }
        }
        Value::Array(types)
    }

    /// One association result page of `pos` (from the record with `to_id`
    /// `start` on): the `to` entries and the cursor of the next page.
    fn association_page(
        &self,
        side: &Side<'_>,
        pos: usize,
        to: &View<'_>,
        start: u64,
        limit: usize,
    ) -> (Vec<Value>, Option<String>) {
        let all = self.neighbours(side, pos, to);
        let first = all.partition_point(|&(o, _)| ACTIVE_ID_BASE + (o as u64) < start);
        let rest = &all[first..];
        let page: Vec<Value> = rest
            .iter()
            .take(limit)
            .map(|&(o, generated)| {
                json!({
                    "toObjectId": (ACTIVE_ID_BASE + o as u64).to_string(),
                    "associationTypes": self.association_types(side, pos, o, generated),
                })
            })
            .collect();
        let next = rest
            .get(limit)
            .map(|&(o, _)| encode_cursor(ACTIVE_ID_BASE + o as u64));
        (page, next)
    }

    /// The active position of a from id, if it is an active record.
    fn active_position(&self, view: &View<'_>, id: &str) -> Option<usize> {
        match id.trim().parse::<u64>().ok().and_then(|n| view.locate(n)) {
            Some((false, pos, Life::Active)) => Some(pos),
            _ => None,
        }
    }

    fn association_batch_read(&self, req: &Request, from_type: &str, to_type: &str) -> Reply {
        let started = Utc::now().timestamp_millis();
        for t in [from_type, to_type] {
            if self.resolve(t).is_none() {
                return self.unknown_type(t);
            }
        }
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => return self.invalid_json(&e),
        };
        let Some(inputs) = body.get("inputs").and_then(Value::as_array) else {
            return self.bad_request("Invalid input JSON: 'inputs' must be an array");
        };
        if inputs.len() > ASSOCIATION_BATCH_MAX {
            return self.bad_request(&format!(
                "Batch read requests to the associations API may not exceed {ASSOCIATION_BATCH_MAX} inputs, got {}",
                inputs.len()
            ));
        }
        let mut parsed = Vec::with_capacity(inputs.len());
        for input in inputs {
            let id = match input.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return self.bad_request("Invalid input JSON: every input needs an 'id'"),
            };
            let start = match input.get("after").and_then(Value::as_str) {
                None | Some("") => 0,
                Some(after) => match decode_cursor(after) {
                    Some(id) => id,
                    None => {
                        return self.bad_request(&format!(
                            "Invalid input: '{after}' is not a valid paging cursor"
                        ))
                    }
                },
            };
            parsed.push((id, start));
        }
        let fail_first = {
            let mut st = self.state();
            st.association_batches.push(parsed.len());
            let fail = st.association_faults > 0 && !parsed.is_empty();
            if fail {
                st.association_faults -= 1;
            }
            fail
        };
        let side = self.assoc_side(from_type, to_type);
        let (from, to) = match (self.resolve(from_type), self.resolve(to_type)) {
            (Some(f), Some(t)) => (f, t),
            _ => return self.not_found(),
        };
        let (mf, mt) = (self.snapshot(from), self.snapshot(to));
        let (vf, vt) = (self.view(from, &mf), self.view(to, &mt));
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (k, (id, start)) in parsed.iter().enumerate() {
            if fail_first && k == 0 {
                errors.push(json!({
                    "status": "error",
                    "category": "INTERNAL_ERROR",
                    "message": format!("Unable to fetch the associations of {} {id}. Please try again.", from.singular),
                    "context": {"fromObjectId": [id]},
                    "errors": [],
                    "links": {},
                }));
                continue;
            }
            let page = match (&side, self.active_position(&vf, id)) {
                (Some(side), Some(pos)) => Some((
                    pos,
                    self.association_page(side, pos, &vt, *start, ASSOCIATION_PAGE),
                )),
                _ => None,
            };
            match page {
                Some((_, (to_entries, next))) if !to_entries.is_empty() => {
                    let mut result = json!({"from": {"id": id}, "to": to_entries});
                    if let (Some(after), Some(obj)) = (next, result.as_object_mut()) {
                        obj.insert("paging".into(), json!({"next": {"after": after}}));
                    }
                    results.push(result);
                }
                _ => errors.push(json!({
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "subCategory": "crm.associations.NO_ASSOCIATIONS_FOUND",
                    "message": format!("No {} is associated with {} {id}.", to.singular, from.singular),
                    "context": {
                        "fromObjectId": [id],
                        "fromObjectType": [from.singular],
                        "toObjectType": [to.singular],
                    },
                    "errors": [],
                    "links": {},
                })),
            }
        }
        let mut out = json!({
            "status": "COMPLETE",
            "results": results,
            "startedAt": iso(started),
            "completedAt": iso(Utc::now().timestamp_millis()),
        });
        let status = if errors.is_empty() {
            200
        } else {
            if let Some(obj) = out.as_object_mut() {
                obj.insert("numErrors".into(), json!(errors.len()));
                obj.insert("errors".into(), Value::Array(errors));
            }
            207
        };
        Reply::value(status, &out)
    }

    fn association_list(&self, req: &Request, from_type: &str, id: &str, to_type: &str) -> Reply {
        for t in [from_type, to_type] {
            if self.resolve(t).is_none() {
                return self.unknown_type(t);
            }
        }
        let query = Query::new(&req.url);
        let limit = match self.parse_limit(&query, ASSOCIATION_PAGE as i64, ASSOCIATION_PAGE as i64)
        {
            Ok(l) => l,
            Err(reply) => return reply,
        };
        let start = match query.get("after") {
            None | Some("") => 0,
            Some(after) => match decode_cursor(after) {
                Some(id) => id,
                None => {
                    return self.bad_request(&format!(
                        "Invalid input: '{after}' is not a valid paging cursor"
                    ))
                }
            },
        };
        let (from, to) = match (self.resolve(from_type), self.resolve(to_type)) {
            (Some(f), Some(t)) => (f, t),
            _ => return self.not_found(),
        };
        let (mf, mt) = (self.snapshot(from), self.snapshot(to));
        let (vf, vt) = (self.view(from, &mf), self.view(to, &mt));
        let Some(pos) = self.active_position(&vf, id) else {
            return self.not_found();
        };
        let (entries, next) = match self.assoc_side(from_type, to_type) {
            Some(side) => self.association_page(&side, pos, &vt, start, limit),
            None => (Vec::new(), None),
        };
        let mut out = json!({ "results": entries });
        if let (Some(after), Some(obj)) = (next, out.as_object_mut()) {
            let link = self.next_link(req, &after);
            obj.insert(
                "paging".into(),
                json!({"next": {"after": after, "link": link}}),
            );
        }
        Reply::value(200, &out)
    }

    // ----- errors -----

    fn error(&self, status: u16, category: &str, message: &str) -> Reply {
        Reply::value(
            status,
            &json!({
                "status": "error",
                "message": message,
                "correlationId": correlation_id(),
                "category": category,
            }),
        )
    }

    fn bad_request(&self, message: &str) -> Reply {
        self.error(400, "VALIDATION_ERROR", message)
    }

    fn invalid_json(&self, err: &serde_json::Error) -> Reply {
        self.bad_request(&format!(
            "Invalid input JSON on line {}, column {}: {err}",
            err.line(),
            err.column()
        ))
    }

    fn unknown_type(&self, object_type: &str) -> Reply {
        Reply::value(
            400,
            &json!({
                "status": "error",
                "message": format!("Unable to infer object type from: {object_type}"),
                "correlationId": correlation_id(),
                "context": {"objectType": [object_type]},
                "category": "VALIDATION_ERROR",
            }),
        )
    }

    fn not_found(&self) -> Reply {
        self.error(404, "OBJECT_NOT_FOUND", "resource not found")
    }

    fn oauth_error(&self, category: &str, message: &str) -> Reply {
        Reply::value(
            400,
            &json!({
                "status": category,
                "message": message,
                "correlationId": correlation_id(),
                "category": category,
            }),
        )
    }

    fn rate_limited_reply(&self, policy: Policy, caller_private: bool) -> Reply {
        self.rate_limited.fetch_add(1, AtomicOrdering::Relaxed);
        let hub = self.cfg.hub_id;
        let (message, policy_name, group) = match policy {
            Policy::TenSecondly => (
                "You have reached your ten_secondly_rolling limit.",
                "TEN_SECONDLY_ROLLING",
                if caller_private {
                    format!("api-calls-private-app:{hub}")
                } else {
                    format!("api-calls-oauth:{}:{hub}", self.cfg.app_id)
                },
            ),
            Policy::Secondly => (
                "You have reached your secondly limit.",
                "SECONDLY",
                format!("publicapi:crm-search:{hub}"),
            ),
            Policy::Daily => (
                "You have reached your daily limit.",
                "DAILY",
                format!("api-calls-daily:{hub}"),
            ),
        };
        Reply::value(
            429,
            &json!({
                "status": "error",
                "message": message,
                "errorType": "RATE_LIMIT",
                "correlationId": correlation_id(),
                "policyName": policy_name,
                "groupName": group,
                "category": "RATE_LIMITS",
            }),
        )
    }

    fn fault_reply(&self, fault: Fault) -> Reply {
        if fault.status == 429 {
            let mut reply = self.rate_limited_reply(Policy::TenSecondly, true);
            if let Some(secs) = fault.retry_after {
                reply.headers.push(("retry-after", secs.to_string()));
            }
            return reply;
        }
        let (category, message) = match fault.status {
            400 => ("VALIDATION_ERROR", "Invalid input"),
            401 => ("INVALID_AUTHENTICATION", AUTH_MESSAGE),
            403 => (
                "MISSING_SCOPES",
                "This app hasn't been granted all required scopes to make this call.",
            ),
            404 => ("OBJECT_NOT_FOUND", "resource not found"),
            409 => ("CONFLICT", "Conflict"),
            500 => ("INTERNAL_ERROR", "internal error"),
            502 => ("BAD_GATEWAY", "Bad Gateway"),
            503 => ("SERVICE_UNAVAILABLE", "Service Unavailable"),
            504 => ("GATEWAY_TIMEOUT", "Gateway Timeout"),
            _ => ("ERROR", "An error occurred"),
        };
        self.error(fault.status, category, message)
    }

    // ----- entry point -----

    fn handle(&self, req: &Request) -> ResponseTemplate {
        let path = req.url.path();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method.as_str();
        let route = Route::parse(method, &segs);
        let label = route.label(method, path);
        let hostile = self.hostile.before(Provider::HubSpot, req);
        let wire = if let Some(wire) = hostile {
            self.count_path(label);
            wire
        } else {
            let reply = if route == Route::Token {
                self.token_requests.fetch_add(1, AtomicOrdering::Relaxed);
                self.count_path(label);
                let fault = self.state().token_faults.pop_front();
                match fault {
                    Some(fault) => self.fault_reply(fault),
                    None => self.token_endpoint(req),
                }
            } else {
                self.requests.fetch_add(1, AtomicOrdering::Relaxed);
                self.count_path(label);
                self.api(req, route, path)
            };
            Wire::new(
                reply.status,
                reply.headers.into_iter().map(|(k, v)| (k.to_owned(), v)),
                reply.body.map(|b| (super::reply_bytes(b), JSON_MIME)),
            )
        };
        let mut template = self
            .hostile
            .after(Provider::HubSpot, req, wire)
            .into_template();
        let latency = self.latency();
        if !latency.is_zero() {
            template = template.set_delay(latency);
        }
        template
    }

    fn count_path(&self, label: String) {
        *self.state().per_path.entry(label).or_insert(0) += 1;
    }

    fn api(&self, req: &Request, route: Route<'_>, path: &str) -> Reply {
        let fault = self.state().faults.pop_front();
        if let Some(fault) = fault {
            return self.fault_reply(fault);
        }
        if matches!(route, Route::List(_) | Route::Get(_))
            && raw_properties_len(&req.url) > PROPERTIES_MAX_QUERY_BYTES
        {
            // HubSpot's edge answers an over-long request line with an empty 414.
            return Reply::empty(414);
        }
        let needs_auth = path.starts_with("/crm/") || path.starts_with("/account-info/");
        let mut rate_headers = Vec::new();
        if needs_auth {
            match self.gate(req, matches!(route, Route::Search(_))) {
                Ok(headers) => rate_headers = headers,
                Err(reply) => return reply,
            }
        }
        let mut reply = match route {
            Route::List(t) => self.list_objects(req, t),
            Route::Get(t) => self.get_object(req, t),
            Route::BatchRead(t) => self.batch_read(req, t),
            Route::Search(t) => self.search(req, t),
            Route::Properties(t) => self.properties(req, t, None),
            Route::Property(t, name) => self.properties(req, t, Some(name)),
            Route::Owners => self.owners(req),
            Route::Owner(id) => self.owner(req, id),
            Route::Pipelines(t) => self.pipelines(t, None, false),
            Route::Pipeline(t, id) => self.pipelines(t, Some(id), false),
            Route::PipelineStages(t, id) => self.pipelines(t, Some(id), true),
            Route::AccessTokenInfo(tok) => self.access_token_info(tok),
            Route::RefreshTokenInfo(tok) => self.refresh_token_info(tok),
            Route::RefreshTokenDelete(tok) => {
                if self.state().refresh.remove(tok).is_some() {
                    Reply::empty(204)
                } else {
                    self.not_found()
                }
            }
            Route::AccountDetails => self.account_details(),
            Route::AssocBatchRead(f, t) => self.association_batch_read(req, f, t),
            Route::AssocList(f, id, t) => self.association_list(req, f, id, t),
            Route::Token | Route::NotFound => self.not_found(),
        };
        reply.headers.extend(rate_headers);
        reply
    }

    // ----- auth and rate limits -----

    fn unauthenticated(&self) -> Reply {
        self.error(401, "INVALID_AUTHENTICATION", AUTH_MESSAGE)
    }

    /// Checks the bearer token and the rate limits; on success returns the
    /// rate-limit headers for the response.
    fn gate(&self, req: &Request, search: bool) -> Result<Vec<(&'static str, String)>, Reply> {
        let Some(token) = bearer(req) else {
            return Err(self.unauthenticated());
        };
        let now = Instant::now();
        let mut guard = self.state();
        let st = &mut *guard;
        let caller = if self.cfg.private_app_tokens.iter().any(|t| t == token) {
            Caller {
                key: token.to_string(),
                private_app: true,
            }
        } else {
            match st.access.get(token) {
                None => return Err(self.unauthenticated()),
                Some(tok) if now >= tok.expires_at => {
                    let minutes = now.duration_since(tok.expires_at).as_secs() / 60;
                    return Err(self.error(
                        401,
                        "EXPIRED_AUTHENTICATION",
                        &format!(
                            "The OAuth token used to make this call expired {minutes} minute(s) ago."
                        ),
                    ));
                }
                Some(_) => Caller {
                    key: "oauth-app".to_string(),
                    private_app: false,
                },
            }
        };

        let used_today = if caller.private_app {
            st.daily.get(&caller.key).copied().unwrap_or(0)
        } else {
            0
        };
        let daily_headers = |used: u64| -> Vec<(&'static str, String)> {
            if caller.private_app {
                vec![
                    (
                        "x-hubspot-ratelimit-daily",
                        self.cfg.daily_limit.to_string(),
                    ),
                    (
                        "x-hubspot-ratelimit-daily-remaining",
                        self.cfg.daily_limit.saturating_sub(used).to_string(),
                    ),
                ]
            } else {
                Vec::new()
            }
        };
        let interval_headers = |limit: FakeRateLimit, used: usize| {
            vec![
                ("x-hubspot-ratelimit-max", limit.max.to_string()),
                (
                    "x-hubspot-ratelimit-remaining",
                    (limit.max as usize).saturating_sub(used).to_string(),
                ),
                (
                    "x-hubspot-ratelimit-interval-milliseconds",
                    limit.window.as_millis().to_string(),
                ),
            ]
        };

        if caller.private_app && used_today >= self.cfg.daily_limit {
            let mut reply = self.rate_limited_reply(Policy::Daily, true);
            reply.headers = daily_headers(used_today);
            return Err(reply);
        }
        let limit = st.rate_limit;
        if let Some(limit) = limit {
            let window = st.windows.entry(caller.key.clone()).or_default();
            prune(window, now, limit);
            if window.len() >= limit.max as usize {
                let mut reply = self.rate_limited_reply(Policy::TenSecondly, caller.private_app);
                reply.headers = interval_headers(limit, window.len());
                reply.headers.extend(daily_headers(used_today));
                return Err(reply);
            }
        }
        let search_limit = if search { st.search_rate_limit } else { None };
        if let Some(slimit) = search_limit {
            let window = st.search_windows.entry(caller.key.clone()).or_default();
            prune(window, now, slimit);
            if window.len() >= slimit.max as usize {
                let mut reply = self.rate_limited_reply(Policy::Secondly, caller.private_app);
                if let Some(limit) = limit {
                    let used = st.windows.get(&caller.key).map_or(0, VecDeque::len);
                    reply.headers = interval_headers(limit, used);
                }
                reply.headers.extend(daily_headers(used_today));
                return Err(reply);
            }
            window.push_back(now);
        }
        let mut headers = Vec::new();
        if let Some(limit) = limit {
            let window = st.windows.entry(caller.key.clone()).or_default();
            window.push_back(now);
            let used = window.len();
            self.max_in_window.fetch_max(
                u32::try_from(used).unwrap_or(u32::MAX),
                AtomicOrdering::Relaxed,
            );
            headers = interval_headers(limit, used);
        }
        if caller.private_app {
            let used = st.daily.entry(caller.key.clone()).or_insert(0);
            *used += 1;
            headers.extend(daily_headers(*used));
        }
        Ok(headers)
    }

    fn mint_access(&self, st: &mut State, scopes: Vec<String>) -> String {
        let token = new_access_token();
        let expires_at = Instant::now() + self.cfg.access_token_ttl;
        st.access
            .insert(token.clone(), AccessToken { expires_at, scopes });
        self.register(&token);
        token
    }

    // ----- OAuth -----

    fn token_endpoint(&self, req: &Request) -> Reply {
        let mut params: HashMap<String, String> = url::form_urlencoded::parse(&req.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (k, v) in req.url.query_pairs() {
            params
                .entry(k.into_owned())
                .or_insert_with(|| v.into_owned());
        }
        let (mut client_id, mut client_secret) = (
            params.get("client_id").cloned(),
            params.get("client_secret").cloned(),
        );
        if client_id.is_none() || client_secret.is_none() {
            if let Some((id, secret)) = basic_credentials(req) {
                client_id = client_id.or(Some(id));
                client_secret = client_secret.or(Some(secret));
            }
        }
        let grant = params.get("grant_type").map(String::as_str).unwrap_or("");
        if !matches!(
            grant,
            "authorization_code" | "refresh_token" | "client_credentials"
        ) {
            return self.oauth_error("BAD_GRANT_TYPE", "missing or unknown grant type");
        }
        if client_id.as_deref() != Some(self.cfg.client_id.as_str()) {
            return self.oauth_error("BAD_CLIENT_ID", "missing or unknown client id");
        }
        if client_secret.as_deref() != Some(self.cfg.client_secret.as_str()) {
            return self.oauth_error("BAD_CLIENT_SECRET", "missing or invalid client secret");
        }
        let mut st = self.state();
        match grant {
            "authorization_code" => {
                let code = params.get("code").map(String::as_str).unwrap_or("");
                let redirect = params.get("redirect_uri").map(String::as_str).unwrap_or("");
                if redirect.is_empty() {
                    return self.oauth_error("BAD_REDIRECT_URI", "missing or invalid redirect uri");
                }
                let Some(scopes) = st.codes.remove(code) else {
                    return self.oauth_error("BAD_AUTH_CODE", "missing or unknown auth code");
                };
                let refresh = new_refresh_token();
                st.refresh.insert(refresh.clone(), scopes.clone());
                self.register(&refresh);
                let access = self.mint_access(&mut st, scopes.clone());
                drop(st);
                self.code_exchanges.fetch_add(1, AtomicOrdering::Relaxed);
                self.token_response(&access, Some(&refresh), &scopes, "access_token")
            }
            "refresh_token" => {
                let presented = params
                    .get("refresh_token")
                    .map(String::as_str)
                    .unwrap_or("");
                let Some(scopes) = st.refresh.get(presented).cloned() else {
                    return self
                        .oauth_error("BAD_REFRESH_TOKEN", "missing or unknown refresh token");
                };
                let refresh = if self.cfg.rotate_refresh_tokens {
                    st.refresh.remove(presented);
                    let fresh = new_refresh_token();
                    st.refresh.insert(fresh.clone(), scopes.clone());
                    self.register(&fresh);
                    fresh
                } else {
                    presented.to_string()
                };
                let access = self.mint_access(&mut st, scopes.clone());
                drop(st);
                self.token_refreshes.fetch_add(1, AtomicOrdering::Relaxed);
                self.token_response(&access, Some(&refresh), &scopes, "access_token")
            }
            _ => {
                let scopes: Vec<String> = match params.get("scope") {
                    Some(s) if !s.trim().is_empty() => {
                        s.split_whitespace().map(str::to_string).collect()
                    }
                    _ => default_scopes(),
                };
                let access = self.mint_access(&mut st, scopes.clone());
                drop(st);
                self.token_response(&access, None, &scopes, "client_credentials")
            }
        }
    }

    fn token_response(
        &self,
        access: &str,
        refresh: Option<&str>,
        scopes: &[String],
        token_use: &str,
    ) -> Reply {
        let mut body = json!({
            "token_type": "bearer",
            "access_token": access,
            "expires_in": self.cfg.access_token_ttl.as_secs(),
            "token_use": token_use,
            "hub_id": self.cfg.hub_id,
            "user_id": self.cfg.user_id,
            "scopes": scopes,
        });
        if let (Some(refresh), Some(obj)) = (refresh, body.as_object_mut()) {
            obj.insert("refresh_token".to_string(), json!(refresh));
        }
        Reply::value(200, &body)
    }

    fn access_token_info(&self, token: &str) -> Reply {
        let now = Instant::now();
        let info = {
            let st = self.state();
            st.access
                .get(token)
                .map(|t| (t.expires_at, t.scopes.clone()))
        };
        match info {
            Some((expires_at, scopes)) if expires_at > now => Reply::value(
                200,
                &json!({
                    "token": token,
                    "user": self.cfg.user,
                    "hub_domain": self.cfg.hub_domain,
                    "hub_id": self.cfg.hub_id,
                    "app_id": self.cfg.app_id,
                    "scopes": scopes,
                    "expires_in": expires_at.duration_since(now).as_secs(),
                    "user_id": self.cfg.user_id,
                    "token_type": "access",
                    "is_private_distribution": false,
                }),
            ),
            Some(_) => self.error(404, "OBJECT_NOT_FOUND", "access token expired"),
            None => self.error(404, "OBJECT_NOT_FOUND", "access token not found"),
        }
    }

    fn refresh_token_info(&self, token: &str) -> Reply {
        let scopes = self.state().refresh.get(token).cloned();
        match scopes {
            Some(scopes) => Reply::value(
                200,
                &json!({
                    "token": token,
                    "user": self.cfg.user,
                    "hub_domain": self.cfg.hub_domain,
                    "hub_id": self.cfg.hub_id,
                    "client_id": self.cfg.client_id,
                    "scopes": scopes,
                    "user_id": self.cfg.user_id,
                    "token_type": "refresh",
                }),
            ),
            None => self.error(404, "OBJECT_NOT_FOUND", "refresh token not found"),
        }
    }

    fn account_details(&self) -> Reply {
        Reply::value(
            200,
            &json!({
                "portalId": self.cfg.hub_id,
                "accountType": "STANDARD",
                "timeZone": "US/Eastern",
                "companyCurrency": "USD",
                "additionalCurrencies": [],
                "utcOffset": "-05:00",
                "utcOffsetMilliseconds": -18_000_000,
                "uiDomain": "app.hubspot.com",
                "dataHostingLocation": "na1",
            }),
        )
    }

    // ----- objects -----

    fn parse_limit(&self, query: &Query<'_>, default: i64, max: i64) -> Result<usize, Reply> {
        let Some(raw) = query.get("limit") else {
            return usize::try_from(default).map_err(|_| self.bad_request("invalid limit"));
        };
        match raw.trim().parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => {
                usize::try_from(n).map_err(|_| self.bad_request("invalid limit"))
            }
            Ok(n) => Err(self.bad_request(&format!(
                "Invalid input: limit must be between 1 and {max}, got {n}"
            ))),
            Err(_) => Err(self.bad_request(&format!(
                "Unable to parse query parameter limit: '{raw}' is not an integer"
            ))),
        }
    }

    fn parse_archived(&self, query: &Query<'_>) -> Result<bool, Reply> {
        match query.get("archived") {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") || v.is_empty() => Ok(false),
            Some(v) => Err(self.bad_request(&format!(
                "Unable to parse query parameter archived: '{v}' is not a boolean"
            ))),
        }
    }

    fn next_link(&self, req: &Request, after: &str) -> String {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in req.url.query_pairs() {
            if k != "after" {
                ser.append_pair(&k, &v);
            }
        }
        ser.append_pair("after", after);
        format!("{}{}?{}", self.uri, req.url.path(), ser.finish())
    }

    fn list_objects(&self, req: &Request, object_type: &str) -> Reply {
        let Some(schema) = self.resolve(object_type) else {
            return self.unknown_type(object_type);
        };
        let query = Query::new(&req.url);
        let limit = match self.parse_limit(&query, 10, LIST_MAX_LIMIT) {
            Ok(l) => l,
            Err(reply) => return reply,
        };
        let archived = match self.parse_archived(&query) {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        let muts = self.snapshot(schema);
        let view = self.view(schema, &muts);
        // Cursors are the id of the next record. Archived active records
        // (ids below the archived range) come first in the archived listing.
        let start_id = match query.get("after") {
            None | Some("") => ACTIVE_ID_BASE,
            Some(after) => match decode_cursor(after) {
                Some(id) if id >= ACTIVE_ID_BASE => id,
                _ => {
                    return self.bad_request(&format!(
                        "Invalid input: '{after}' is not a valid paging cursor"
                    ))
                }
            },
        };
        // This page's records and the next one, as (archived id space, position).
        let mut items: Vec<(bool, usize)> = Vec::with_capacity(limit + 1);
        let start = usize::try_from(start_id - ACTIVE_ID_BASE).unwrap_or(usize::MAX);
        if archived {
            if start_id < ARCHIVED_ID_BASE {
                items.extend(
                    muts.archived
                        .range(start..)
                        .take(limit + 1)
                        .map(|&pos| (false, pos)),
                );
            }
            let from = usize::try_from(start_id.saturating_sub(ARCHIVED_ID_BASE))
                .unwrap_or(usize::MAX)
                .min(schema.seed.archived);
            let room = limit + 1 - items.len();
            items.extend((from..schema.seed.archived).take(room).map(|j| (true, j)));
        } else {
            let mut next = view.next_active(start);
            while let Some(pos) = next.filter(|_| items.len() <= limit) {
                items.push((false, pos));
                next = view.next_active(pos + 1);
            }
        }
        let next_item = items.get(limit).copied();
        items.truncate(limit);
        let (malformed, repeat) = if archived {
            (false, false)
        } else {
            self.page_faults(&schema.name, start, limit)
        };
        let bad = if archived || limit == 0 || start % limit != 0 {
            None
        } else {
            let st = self.state();
            st.bad.get(&(schema.name.clone(), start / limit)).copied()
        };
        let props = schema.select(query.all("properties"));
        let hist = schema.select_exact(query.all("propertiesWithHistory"));
        let mut writer = RecordWriter::new(self, schema, props, hist);
        let mut out = String::with_capacity(64 + items.len() * writer.estimate());
        out.push_str("{\"results\":[");
        let broken = (malformed && !items.is_empty()).then(|| (items.len() - 1).min(3));
        for (k, &(space, pos)) in items.iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            let at = out.len();
            writer.write(&mut out, &view.rec(space, pos), broken == Some(k));
            if let Some(kind) = bad.filter(|_| k == (items.len() - 1).min(3)) {
                let key = "\"properties\":{";
                if let Some(i) = out[at..].find(key) {
                    kind.insert_into(&mut out, at + i + key.len() - 1);
                }
            }
        }
        out.push(']');
        let truncated = !archived && self.paging_dropped(&schema.name, start, limit);
        if let Some(next_item) = next_item.filter(|_| !truncated) {
            let next_id = if repeat {
                start_id
            } else {
                match next_item {
                    (true, j) => ARCHIVED_ID_BASE + j as u64,
                    (false, pos) => ACTIVE_ID_BASE + pos as u64,
                }
            };
            let after = encode_cursor(next_id);
            let link = self.next_link(req, &after);
            out.push_str(",\"paging\":{\"next\":{\"after\":");
            push_json_str(&mut out, &after);
            out.push_str(",\"link\":");
            push_json_str(&mut out, &link);
            out.push_str("}}");
        }
        out.push('}');
        Reply::json(200, out)
    }

    /// True when the list page starting at `start` loses its `paging`
    /// ([`HubSpotFake::drop_paging`]).
    fn paging_dropped(&self, name: &str, start: usize, limit: usize) -> bool {
        let st = self.state();
        match st.drop_paging.get(name) {
            Some(&from) if limit > 0 => start / limit >= from,
            _ => false,
        }
    }

    /// `(malformed, repeat_cursor)` for the list page starting at `start`.
    fn page_faults(&self, name: &str, start: usize, limit: usize) -> (bool, bool) {
        if limit == 0 || start % limit != 0 {
            return (false, false);
        }
        let page = start / limit;
        let st = self.state();
        if st.malformed.is_empty() && st.repeat.is_empty() {
            return (false, false);
        }
        let malformed = st.malformed.contains(&(name.to_string(), page));
        let repeat = st.repeat.get(name).is_some_and(|&p| page >= p);
        (malformed, repeat)
    }

    fn get_object(&self, req: &Request, object_type: &str) -> Reply {
        let Some(schema) = self.resolve(object_type) else {
            return self.unknown_type(object_type);
        };
        let query = Query::new(&req.url);
        let archived = match self.parse_archived(&query) {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        if let Some(id_property) = query.get("idProperty") {
            if id_property != "hs_object_id" {
                return self.bad_request(&format!(
                    "The fake supports only idProperty=hs_object_id, got '{id_property}'"
                ));
            }
        }
        let muts = self.snapshot(schema);
        let view = self.view(schema, &muts);
        let id = req.url.path().rsplit('/').next().unwrap_or("");
        // As HubSpot, the id of a merged-away record answers its survivor.
        let found = match id.parse::<u64>().ok().and_then(|id| view.locate(id)) {
            Some((space, pos, Life::Archived(_))) if archived => Some((space, pos)),
            Some((_, pos, Life::Active)) if !archived => Some((false, pos)),
            Some((_, pos, Life::Merged(_))) if !archived => {
                let survivor = view.survivor(pos);
                view.is_active(survivor).then_some((false, survivor))
            }
            _ => None,
        };
        let Some((space, pos)) = found else {
            return self.not_found();
        };
        let props = schema.select(query.all("properties"));
        let hist = schema.select_exact(query.all("propertiesWithHistory"));
        let mut writer = RecordWriter::new(self, schema, props, hist);
        let mut out = String::with_capacity(writer.estimate());
        writer.write(&mut out, &view.rec(space, pos), false);
        Reply::json(200, out)
    }

    fn batch_read(&self, req: &Request, object_type: &str) -> Reply {
        let started = Utc::now().timestamp_millis();
        let Some(schema) = self.resolve(object_type) else {
            return self.unknown_type(object_type);
        };
        let query = Query::new(&req.url);
        let archived = match self.parse_archived(&query) {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => return self.invalid_json(&e),
        };
        let Some(inputs) = body.get("inputs").and_then(Value::as_array) else {
            return self.bad_request("Invalid input JSON: 'inputs' must be an array");
        };
        if inputs.len() > 100 {
            return self.bad_request(&format!(
                "Batch input size {} exceeds the limit of 100",
                inputs.len()
            ));
        }
        if let Some(id_property) = body.get("idProperty").and_then(Value::as_str) {
            if id_property != "hs_object_id" {
                return self.bad_request(&format!(
                    "The fake supports only idProperty=hs_object_id, got '{id_property}'"
                ));
            }
        }
        let names = |key: &str| -> Vec<&str> {
            body.get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default()
        };
        let props = schema.select(names("properties"));
        let hist = schema.select_exact(names("propertiesWithHistory"));
        let muts = self.snapshot(schema);
        let view = self.view(schema, &muts);
        let mut writer = RecordWriter::new(self, schema, props, hist);
        let mut results = String::with_capacity(16 + inputs.len() * writer.estimate());
        let mut seen = HashSet::new();
        let mut missing: Vec<String> = Vec::new();
        let mut first = true;
        for input in inputs {
            let id = match input.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return self.bad_request("Invalid input JSON: every input needs an 'id'"),
            };
            // Merged-away ids answer not found here (only a single get
            // follows a merge to its survivor).
            let found = id
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|n| view.locate(n))
                .filter(|(_, _, life)| match life {
                    Life::Active => !archived,
                    Life::Archived(_) => archived,
                    Life::Merged(_) => false,
                });
            match found {
                Some((space, pos, _)) => {
                    if seen.insert((space, pos)) {
                        if !first {
                            results.push(',');
                        }
                        first = false;
                        writer.write(&mut results, &view.rec(space, pos), false);
                    }
                }
                None => {
                    if !missing.contains(&id) {
                        missing.push(id);
                    }
                }
            }
        }
        let completed = Utc::now().timestamp_millis();
        let mut out = String::with_capacity(results.len() + 512);
        out.push_str("{\"status\":\"COMPLETE\",\"results\":[");
        out.push_str(&results);
        out.push(']');
        let status = if missing.is_empty() {
            200
        } else {
            let error = json!([{
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": format!(
                    "Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.",
                    schema.singular
                ),
                "context": {"ids": missing},
                "errors": [],
                "links": {},
            }]);
            out.push_str(",\"numErrors\":1,\"errors\":");
            out.push_str(&error.to_string());
            207
        };
        out.push_str(",\"startedAt\":");
        push_json_str(&mut out, &iso(started));
        out.push_str(",\"completedAt\":");
        push_json_str(&mut out, &iso(completed));
        out.push('}');
        Reply::json(status, out)
    }

    // ----- search -----

    fn search(&self, req: &Request, object_type: &str) -> Reply {
        let Some(schema) = self.resolve(object_type) else {
            return self.unknown_type(object_type);
        };
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => return self.invalid_json(&e),
        };
        let Some(obj) = body.as_object() else {
            return self.bad_request("Invalid input JSON: expected an object");
        };
        let request = match SearchRequest::parse(schema, obj) {
            Ok(r) => r,
            Err(message) => return self.bad_request(&message),
        };
        if request.after >= SEARCH_CAP {
            return self.bad_request(&format!(
                "Paging past {SEARCH_CAP} results is not supported (after={}). Narrow the search with filters, for example on {}.",
                request.after, schema.last_modified
            ));
        }
        let muts = self.snapshot(schema);
        let view = self.view(schema, &muts);
        let cache_key = format!(
            "{}|{}|{}|{}|{}",
            schema.name,
            muts.generation,
            obj.get("filterGroups").unwrap_or(&Value::Null),
            obj.get("sorts").unwrap_or(&Value::Null),
            obj.get("query").unwrap_or(&Value::Null),
        );
        let hits = self.cached_search(&cache_key, || run_search(&view, &request));
        let start = request.after.min(hits.top.len());
        let end = start.saturating_add(request.limit).min(hits.top.len());
        let props = match obj.get("properties").and_then(Value::as_array) {
            Some(names) => schema.select(names.iter().filter_map(Value::as_str)),
            None => schema.defaults.clone(),
        };
        let mut writer = RecordWriter::new(self, schema, props, Vec::new());
        let mut out = String::with_capacity(64 + (end - start) * writer.estimate());
        let _ = write!(out, "{{\"total\":{},\"results\":[", hits.total);
        for (k, &pos) in hits.top[start..end].iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            writer.write(&mut out, &view.rec(false, pos), false);
        }
        out.push(']');
        if end > start && end < hits.total {
            let _ = write!(out, ",\"paging\":{{\"next\":{{\"after\":\"{end}\"}}}}");
        }
        out.push('}');
        Reply::json(200, out)
    }

    fn cached_search(&self, key: &str, compute: impl FnOnce() -> SearchHits) -> Arc<SearchHits> {
        {
            let cache = self.search_cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, hits)) = cache.iter().find(|(k, _)| k == key) {
                return Arc::clone(hits);
            }
        }
        let hits = Arc::new(compute());
        let mut cache = self.search_cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.push_back((key.to_string(), Arc::clone(&hits)));
        while cache.len() > 8 {
            cache.pop_front();
        }
        hits
    }

    // ----- metadata -----

    fn properties(&self, req: &Request, object_type: &str, name: Option<&str>) -> Reply {
        let Some(schema) = self.resolve(object_type) else {
            return self.unknown_type(object_type);
        };
        let query = Query::new(&req.url);
        let archived = match self.parse_archived(&query) {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        match name {
            Some(name) => match schema.by_name.get(name) {
                Some(&i) if !archived => Reply::value(200, &property_json(schema, i)),
                _ => self.not_found(),
            },
            None => {
                let results: Vec<Value> = if archived {
                    Vec::new()
                } else {
                    (0..schema.props.len())
                        .map(|i| property_json(schema, i))
                        .collect()
                };
                Reply::value(200, &json!({ "results": results }))
            }
        }
    }

    fn owner_json(&self, i: usize, archived: bool) -> Value {
        let h = mix(self.cfg.seed ^ fnv1a("@owners") ^ mix(i as u64 | (u64::from(archived) << 40)));
        let first = pick(FIRST_NAMES, h);
        let last = pick(LAST_NAMES, h >> 16);
        let mut email = String::new();
        ascii_slug(&mut email, first);
        email.push('.');
        ascii_slug(&mut email, last);
        let _ = write!(email, "{i}@example.com");
        let id = if archived {
            ARCHIVED_OWNER_ID_BASE + i as u64
        } else {
            OWNER_ID_BASE + i as u64
        };
        let user_id = OWNER_USER_ID_BASE + id % 1_000_000;
        let created = BASE_MS + i as i64 * 7 * DAY_MS;
        let mut teams = Vec::new();
        if i % 5 != 0 {
            let (tid, tname) = TEAMS[i % TEAMS.len()];
            teams.push(json!({"id": tid, "name": tname, "primary": true}));
            if i % 4 == 0 {
                let (tid, tname) = TEAMS[(i + 1) % TEAMS.len()];
                teams.push(json!({"id": tid, "name": tname, "primary": false}));
            }
        }
        let mut owner = json!({
            "id": id.to_string(),
            "email": email,
            "type": "PERSON",
            "firstName": first,
            "lastName": last,
            "userId": user_id,
            "userIdIncludingInactive": user_id,
            "createdAt": iso(created),
            "updatedAt": iso(created + 30 * DAY_MS + (h % DAY_MS as u64) as i64),
            "archived": archived,
            "teams": teams,
        });
        if archived {
            if let Some(obj) = owner.as_object_mut() {
                obj.remove("userId");
            }
        }
        owner
    }

    fn owners(&self, req: &Request) -> Reply {
        let query = Query::new(&req.url);
        let limit = match self.parse_limit(&query, 100, OWNERS_MAX_LIMIT) {
            Ok(l) => l,
            Err(reply) => return reply,
        };
        let archived = match self.parse_archived(&query) {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        let (population, base) = if archived {
            (usize::from(self.cfg.owners > 0), ARCHIVED_OWNER_ID_BASE)
        } else {
            (self.cfg.owners, OWNER_ID_BASE)
        };
        let mut owners: Vec<Value> = (0..population)
            .map(|i| self.owner_json(i, archived))
            .collect();
        if let Some(email) = query.get("email") {
            owners.retain(|o| {
                o.get("email")
                    .and_then(Value::as_str)
                    .is_some_and(|e| e.eq_ignore_ascii_case(email))
            });
        }
        let start = match query.get("after") {
            None | Some("") => 0,
            Some(after) => match decode_cursor(after) {
                Some(id) if id >= base => usize::try_from(id - base).unwrap_or(usize::MAX),
                _ => {
                    return self.bad_request(&format!(
                        "Invalid input: '{after}' is not a valid paging cursor"
                    ))
                }
            },
        };
        let start = start.min(owners.len());
        let end = start.saturating_add(limit).min(owners.len());
        let mut body = json!({ "results": owners[start..end].to_vec() });
        if end < owners.len() {
            let after = encode_cursor(base + end as u64);
            let link = self.next_link(req, &after);
            if let Some(obj) = body.as_object_mut() {
                obj.insert(
                    "paging".to_string(),
                    json!({"next": {"after": after, "link": link}}),
                );
            }
        }
        Reply::value(200, &body)
    }

    fn owner(&self, req: &Request, id: &str) -> Reply {
        let query = Query::new(&req.url);
        let archived = match self.parse_archived(&query) {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        let by_user_id = query.get("idProperty") == Some("userId");
        let Ok(n) = id.parse::<u64>() else {
            return self.bad_request(&format!("Invalid owner id '{id}'"));
        };
        let population = if archived {
            usize::from(self.cfg.owners > 0)
        } else {
            self.cfg.owners
        };
        let found = (0..population)
            .map(|i| self.owner_json(i, archived))
            .find(|o| {
                let key = if by_user_id { "userId" } else { "id" };
                match o.get(key) {
                    Some(Value::String(s)) => s == id,
                    Some(Value::Number(v)) => v.as_u64() == Some(n),
                    _ => false,
                }
            });
        match found {
            Some(owner) => Reply::value(200, &owner),
            None => self.not_found(),
        }
    }

    fn pipelines(&self, object_type: &str, id: Option<&str>, stages_only: bool) -> Reply {
        let Some(schema) = self.resolve(object_type) else {
            return self.unknown_type(object_type);
        };
        let defs = pipelines_of(&schema.name);
        match id {
            None => {
                let results: Vec<Value> = defs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| pipeline_json(p, i))
                    .collect();
                Reply::value(200, &json!({ "results": results }))
            }
            Some(id) => match defs.iter().enumerate().find(|(_, p)| p.id == id) {
                Some((i, p)) => {
                    let value = pipeline_json(p, i);
                    if stages_only {
                        let stages = value.get("stages").cloned().unwrap_or(json!([]));
                        Reply::value(200, &json!({ "results": stages }))
                    } else {
                        Reply::value(200, &value)
                    }
                }
                None => self.not_found(),
            },
        }
    }
}

fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let value = req.headers.get("authorization")?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded before encoding.
    let unescape = |s: &str| -> String {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

fn property_json(schema: &TypeSchema, i: usize) -> Value {
    let def = &schema.props[i];
    let options: Vec<Value> = def
        .options
        .iter()
        .enumerate()
        .map(|(k, (label, value))| {
            json!({"label": label, "value": value, "displayOrder": k, "hidden": false})
        })
        .collect();
    let created = if def.hubspot_defined {
        DEFINITIONS_CREATED
    } else {
        CUSTOM_DEFINITIONS_CREATED
    };
    let mut value = json!({
        "updatedAt": created,
        "createdAt": created,
        "name": def.name,
        "label": def.label,
        "type": def.ptype,
        "fieldType": def.field_type,
        "description": def.description,
        "groupName": def.group,
        "options": options,
        "displayOrder": if def.hubspot_defined { -1 } else { i as i64 },
        "calculated": def.calculated,
        "externalOptions": def.external_options,
        "hasUniqueValue": false,
        "hidden": false,
        "modificationMetadata": {
            "archivable": !def.hubspot_defined,
            "readOnlyDefinition": def.hubspot_defined,
            "readOnlyValue": def.read_only_value,
        },
        "formField": !def.read_only_value,
        "dataSensitivity": "non_sensitive",
    });
    if let Some(obj) = value.as_object_mut() {
        if def.hubspot_defined {
            obj.insert("hubspotDefined".to_string(), json!(true));
        } else {
            obj.insert("createdUserId".to_string(), json!("7000001"));
            obj.insert("updatedUserId".to_string(), json!("7000001"));
        }
        if def.field_type == "calculation_equation" {
            obj.insert(
                "calculationFormula".to_string(),
                json!("(hs_object_id % 97) * 1.5"),
            );
        }
    }
    value
}

fn pipeline_json(p: &PipelineDef, order: usize) -> Value {
    let created = if p.is_default {
        EPOCH_ISO
    } else {
        PIPELINE_CREATED
    };
    let stages: Vec<Value> = p
        .stages
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let metadata: Map<String, Value> = s
                .metadata
                .iter()
                .map(|(k, v)| ((*k).to_string(), json!(v)))
                .collect();
            json!({
                "id": s.id,
                "label": s.label,
                "displayOrder": k,
                "metadata": metadata,
                "createdAt": created,
                "updatedAt": PIPELINE_CREATED,
                "archived": false,
                "writePermissions": "CRM_PERMISSIONS_ENFORCEMENT",
            })
        })
        .collect();
    json!({
        "id": p.id,
        "label": p.label,
        "displayOrder": order,
        "createdAt": created,
        "updatedAt": PIPELINE_CREATED,
        "archived": false,
        "stages": stages,
    })
}

// ---------------------------------------------------------------------------
// Record JSON
// ---------------------------------------------------------------------------

/// Writes `SimplePublicObject` JSON for one property selection.
struct RecordWriter<'a> {
    schema: &'a TypeSchema,
    props: Vec<usize>,
    hist: Vec<usize>,
    scratch: String,
    source_id: String,
    user_id: u64,
}

impl<'a> RecordWriter<'a> {
    fn new(inner: &Inner, schema: &'a TypeSchema, props: Vec<usize>, hist: Vec<usize>) -> Self {
        Self {
            schema,
            props,
            hist,
            scratch: String::with_capacity(128),
            source_id: format!("userId:{}", inner.cfg.user_id),
            user_id: inner.cfg.user_id,
        }
    }

    /// Rough size of one record, for buffer capacity.
    fn estimate(&self) -> usize {
        160 + self.props.len() * 48 + self.hist.len() * 160
    }

    fn write(&mut self, out: &mut String, rec: &Rec<'_>, malformed: bool) {
        let _ = write!(out, "{{\"id\":\"{}\",\"properties\":", rec.id);
        if malformed {
            push_json_str(out, "[object Object]");
        } else {
            out.push('{');
            for (k, &p) in self.props.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                let def = &self.schema.props[p];
                push_json_str(out, &def.name);
                out.push(':');
                self.scratch.clear();
                if gen_value(self.schema, def, rec, &mut self.scratch) {
                    push_json_str(out, &self.scratch);
                } else {
                    out.push_str("null");
                }
            }
            out.push('}');
        }
        out.push_str(",\"createdAt\":\"");
        push_iso(out, rec.created);
        out.push_str("\",\"updatedAt\":\"");
        push_iso(out, rec.updated);
        out.push('"');
        match rec.archived_at {
            Some(at) => {
                out.push_str(",\"archived\":true,\"archivedAt\":\"");
                push_iso(out, at);
                out.push('"');
            }
            None => out.push_str(",\"archived\":false"),
        }
        if !self.hist.is_empty() {
            out.push_str(",\"propertiesWithHistory\":{");
            for (k, &p) in self.hist.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                let def = &self.schema.props[p];
                push_json_str(out, &def.name);
                out.push_str(":[");
                self.scratch.clear();
                if gen_value(self.schema, def, rec, &mut self.scratch) {
                    out.push_str("{\"value\":");
                    push_json_str(out, &self.scratch);
                    out.push_str(",\"timestamp\":\"");
                    push_iso(out, rec.updated);
                    out.push_str("\",\"sourceType\":\"CRM_UI\",\"sourceId\":");
                    push_json_str(out, &self.source_id);
                    let _ = write!(out, ",\"updatedByUserId\":{}}}", self.user_id);
                }
                out.push(']');
            }
            out.push('}');
        }
        out.push('}');
    }
}

// ---------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------

/// What a filter or sort refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operand {
    Id,
    Created,
    Updated,
    Prop(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
    Between,
    In,
    NotIn,
    Has,
    NotHas,
    ContainsToken,
    NotContainsToken,
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Num(f64),
    Text(String),
}

fn cmp_val(a: &Val, b: &Val) -> Option<Ordering> {
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => x.partial_cmp(y),
        (Val::Text(x), Val::Text(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[derive(Debug, Clone)]
struct Filter {
    operand: Operand,
    op: Op,
    values: Vec<Val>,
    token: String,
}

#[derive(Debug)]
struct Group {
    filters: Vec<Filter>,
    /// Candidate positions `lo..hi` of generated (unchanged) active records
    /// implied by the filters.
    range: (usize, usize),
}

#[derive(Debug)]
struct SearchRequest {
    groups: Vec<Group>,
    sort: Option<(Operand, bool)>,
    query: Option<String>,
    limit: usize,
    after: usize,
}

fn json_scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn operand_kind(schema: &TypeSchema, operand: Operand) -> Kind {
    match operand {
        Operand::Id => Kind::Num,
        Operand::Created | Operand::Updated => Kind::Time,
        Operand::Prop(p) => schema.props[p].kind(),
    }
}

fn resolve_operand(schema: &TypeSchema, name: &str) -> Result<Operand, String> {
    if name == "hs_object_id" {
        return Ok(Operand::Id);
    }
    if name == "createdate" {
        return Ok(Operand::Created);
    }
    if name == schema.last_modified {
        return Ok(Operand::Updated);
    }
    schema
        .by_name
        .get(name)
        .map(|&i| Operand::Prop(i))
        .ok_or_else(|| format!("Property \"{name}\" does not exist on {}", schema.name))
}

fn parse_val(kind: Kind, raw: &str, property: &str) -> Result<Val, String> {
    let invalid = || format!("Invalid value '{raw}' for property {property}");
    match kind {
        Kind::Num => raw
            .trim()
            .parse::<f64>()
            .map(Val::Num)
            .map_err(|_| invalid()),
        Kind::Time => parse_time(raw)
            .map(|ms| Val::Num(ms as f64))
            .ok_or_else(invalid),
        Kind::Text => Ok(Val::Text(raw.to_lowercase())),
    }
}

impl SearchRequest {
    fn parse(schema: &TypeSchema, obj: &Map<String, Value>) -> Result<Self, String> {
        let limit = match obj.get("limit") {
            None | Some(Value::Null) => 10,
            Some(v) => match json_scalar(v).and_then(|s| s.trim().parse::<i64>().ok()) {
                Some(n) if (0..=SEARCH_MAX_LIMIT).contains(&n) => n as usize,
                Some(n) => {
                    return Err(format!(
                        "Invalid input: limit must be between 0 and {SEARCH_MAX_LIMIT}, got {n}"
                    ))
                }
                None => return Err("Invalid input: limit must be an integer".to_string()),
            },
        };
        let after = match obj.get("after") {
            None | Some(Value::Null) => 0,
            Some(v) => match json_scalar(v) {
                Some(s) if s.trim().is_empty() => 0,
                Some(s) => s
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("Invalid input: after '{s}' is not a valid offset"))?,
                None => return Err("Invalid input: after must be a string".to_string()),
            },
        };
        let query = match obj.get("query") {
            None | Some(Value::Null) => None,
            Some(Value::String(q)) if q.chars().count() > 3000 => {
                return Err("Invalid input: query is longer than 3000 characters".to_string())
            }
            Some(Value::String(q)) if q.trim().is_empty() => None,
            Some(Value::String(q)) => Some(q.trim().to_lowercase()),
            Some(_) => return Err("Invalid input: query must be a string".to_string()),
        };
        let sort = match obj.get("sorts") {
            None | Some(Value::Null) => None,
            Some(Value::Array(sorts)) => match sorts.first() {
                None => None,
                Some(Value::String(s)) => {
                    let (name, desc) = match s.strip_prefix('-') {
                        Some(rest) => (rest, true),
                        None => (s.as_str(), false),
                    };
                    Some((resolve_operand(schema, name.trim())?, desc))
                }
                Some(Value::Object(o)) => {
                    let name = o
                        .get("propertyName")
                        .and_then(Value::as_str)
                        .ok_or("Invalid input: sort needs a propertyName")?;
                    let desc = match o.get("direction").and_then(Value::as_str) {
                        None => false,
                        Some(d) if d.eq_ignore_ascii_case("ASCENDING") => false,
                        Some(d) if d.eq_ignore_ascii_case("DESCENDING") => true,
                        Some(d) => {
                            return Err(format!("Invalid input: unknown sort direction '{d}'"))
                        }
                    };
                    Some((resolve_operand(schema, name)?, desc))
                }
                Some(_) => {
                    return Err("Invalid input: sorts must be strings or objects".to_string())
                }
            },
            Some(_) => return Err("Invalid input: sorts must be an array".to_string()),
        };
        let mut groups = Vec::new();
        match obj.get("filterGroups") {
            None | Some(Value::Null) => {}
            Some(Value::Array(raw_groups)) => {
                if raw_groups.len() > 6 {
                    return Err(format!(
                        "Invalid input: at most 6 filterGroups are allowed, got {}",
                        raw_groups.len()
                    ));
                }
                let mut total = 0;
                for g in raw_groups {
                    let filters = match g.get("filters") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::Array(fs)) => fs
                            .iter()
                            .map(|f| parse_filter(schema, f))
                            .collect::<Result<Vec<_>, _>>()?,
                        Some(_) => {
                            return Err("Invalid input: filters must be an array".to_string())
                        }
                    };
                    total += filters.len();
                    let range = group_range(&filters, schema.seed.count, true);
                    groups.push(Group { filters, range });
                }
                if total > 18 {
                    return Err(format!(
                        "Invalid input: at most 18 filters are allowed, got {total}"
                    ));
                }
            }
            Some(_) => return Err("Invalid input: filterGroups must be an array".to_string()),
        }
        Ok(Self {
            groups,
            sort,
            query,
            limit,
            after,
        })
    }
}

fn parse_filter(schema: &TypeSchema, f: &Value) -> Result<Filter, String> {
    let name = f
        .get("propertyName")
        .and_then(Value::as_str)
        .ok_or("Invalid input: every filter needs a propertyName")?;
    let operand = resolve_operand(schema, name)?;
    let kind = operand_kind(schema, operand);
    let op_name = f
        .get("operator")
        .and_then(Value::as_str)
        .ok_or("Invalid input: every filter needs an operator")?;
    let op = match op_name.to_ascii_uppercase().as_str() {
        "EQ" => Op::Eq,
        "NEQ" => Op::Neq,
        "LT" => Op::Lt,
        "LTE" => Op::Lte,
        "GT" => Op::Gt,
        "GTE" => Op::Gte,
        "BETWEEN" => Op::Between,
        "IN" => Op::In,
        "NOT_IN" => Op::NotIn,
        "HAS_PROPERTY" => Op::Has,
        "NOT_HAS_PROPERTY" => Op::NotHas,
        "CONTAINS_TOKEN" => Op::ContainsToken,
        "NOT_CONTAINS_TOKEN" => Op::NotContainsToken,
        other => return Err(format!("Invalid input: unknown operator '{other}'")),
    };
    let value = || -> Result<String, String> {
        f.get("value")
            .and_then(json_scalar)
            .ok_or_else(|| format!("Invalid input: operator {op_name} on {name} needs a value"))
    };
    let mut values = Vec::new();
    let mut token = String::new();
    match op {
        Op::Eq | Op::Neq | Op::Lt | Op::Lte | Op::Gt | Op::Gte => {
            values.push(parse_val(kind, &value()?, name)?);
        }
        Op::Between => {
            values.push(parse_val(kind, &value()?, name)?);
            let high = f
                .get("highValue")
                .and_then(json_scalar)
                .ok_or_else(|| format!("Invalid input: BETWEEN on {name} needs a highValue"))?;
            values.push(parse_val(kind, &high, name)?);
        }
        Op::In | Op::NotIn => {
            let raw = f
                .get("values")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("Invalid input: {op_name} on {name} needs values"))?;
            for v in raw {
                let s = json_scalar(v)
                    .ok_or_else(|| format!("Invalid input: bad value in values of {name}"))?;
                values.push(parse_val(kind, &s, name)?);
            }
        }
        Op::Has | Op::NotHas => {}
        Op::ContainsToken | Op::NotContainsToken => {
            token = value()?.replace('*', "").to_lowercase();
        }
    }
    Ok(Filter {
        operand,
        op,
        values,
        token,
    })
}

/// Narrows the active positions a group can match, from its filters on the
/// id and, with `times`, the timestamps (created times of generated records
/// grow with the position, and `updated - created < UPDATE_SPAN_MS`).
/// Conservative by one position.
fn group_range(filters: &[Filter], count: usize, times: bool) -> (usize, usize) {
    let mut lo: i128 = 0;
    let mut hi: i128 = count as i128; // exclusive
    for f in filters {
        let bounds = match (f.op, f.values.as_slice()) {
            (Op::Eq, [Val::Num(v)]) => (Some(v.ceil()), Some(v.floor())),
            (Op::Gt, [Val::Num(v)]) => (Some(v.floor() + 1.0), None),
            (Op::Gte, [Val::Num(v)]) => (Some(v.ceil()), None),
            (Op::Lt, [Val::Num(v)]) => (None, Some(v.ceil() - 1.0)),
            (Op::Lte, [Val::Num(v)]) => (None, Some(v.floor())),
            (Op::Between, [Val::Num(a), Val::Num(b)]) => (Some(a.ceil()), Some(b.floor())),
            _ => continue,
        };
        // `as` saturates for out-of-range floats.
        let (min, max) = (bounds.0.map(|v| v as i128), bounds.1.map(|v| v as i128));
        let step = i128::from(STEP_MS);
        let base = i128::from(BASE_MS);
        let (pos_lo, pos_hi) = match f.operand {
            Operand::Id => (
                min.map(|m| m - i128::from(ACTIVE_ID_BASE)),
                max.map(|m| m - i128::from(ACTIVE_ID_BASE)),
            ),
            Operand::Created | Operand::Updated if !times => continue,
            Operand::Created => (
                min.map(|m| (m - base - step + 1).div_euclid(step)),
                max.map(|m| (m - base).div_euclid(step)),
            ),
            Operand::Updated => (
                min.map(|m| (m - i128::from(UPDATE_SPAN_MS) - base - step + 1).div_euclid(step)),
                max.map(|m| (m - base).div_euclid(step)),
            ),
            Operand::Prop(_) => continue,
        };
        if let Some(p) = pos_lo {
            lo = lo.max(p - 1);
        }
        if let Some(p) = pos_hi {
            hi = hi.min(p + 2);
        }
    }
    let clamp = |v: i128| v.clamp(0, count as i128) as usize;
    let (lo, hi) = (clamp(lo), clamp(hi));
    (lo, hi.max(lo))
}

/// The value of `operand` for `rec`, as search compares it; `None` when the
/// record has no value.
fn record_val(
    schema: &TypeSchema,
    operand: Operand,
    rec: &Rec<'_>,
    scratch: &mut String,
) -> Option<Val> {
    match operand {
        Operand::Id => Some(Val::Num(rec.id as f64)),
        Operand::Created => Some(Val::Num(rec.created as f64)),
        Operand::Updated => Some(Val::Num(rec.updated as f64)),
        Operand::Prop(p) => {
            let def = &schema.props[p];
            scratch.clear();
            if !gen_value(schema, def, rec, scratch) || scratch.is_empty() {
                return None;
            }
            match def.kind() {
                Kind::Num => scratch.parse::<f64>().ok().map(Val::Num),
                Kind::Time => parse_time(scratch).map(|ms| Val::Num(ms as f64)),
                Kind::Text => Some(Val::Text(scratch.to_lowercase())),
            }
        }
    }
}

/// The value of `operand` for `rec` as lower-case text (for token operators).
fn record_text(
    schema: &TypeSchema,
    operand: Operand,
    rec: &Rec<'_>,
    scratch: &mut String,
) -> Option<String> {
    scratch.clear();
    match operand {
        Operand::Id => {
            let _ = write!(scratch, "{}", rec.id);
        }
        Operand::Created => push_iso(scratch, rec.created),
        Operand::Updated => push_iso(scratch, rec.updated),
        Operand::Prop(p) => {
            if !gen_value(schema, &schema.props[p], rec, scratch) {
                return None;
            }
        }
    }
    (!scratch.is_empty()).then(|| scratch.to_lowercase())
}

fn filter_matches(schema: &TypeSchema, f: &Filter, rec: &Rec<'_>, scratch: &mut String) -> bool {
    if matches!(f.op, Op::ContainsToken | Op::NotContainsToken) {
        let found = record_text(schema, f.operand, rec, scratch)
            .is_some_and(|text| text.contains(&f.token));
        return (f.op == Op::ContainsToken) == found;
    }
    let value = record_val(schema, f.operand, rec, scratch);
    let Some(value) = value else {
        return matches!(f.op, Op::Neq | Op::NotIn | Op::NotHas);
    };
    let cmp = |i: usize| f.values.get(i).and_then(|v| cmp_val(&value, v));
    match f.op {
        Op::Eq => cmp(0) == Some(Ordering::Equal),
        Op::Neq => cmp(0) != Some(Ordering::Equal),
        Op::Lt => cmp(0) == Some(Ordering::Less),
        Op::Lte => matches!(cmp(0), Some(Ordering::Less | Ordering::Equal)),
        Op::Gt => cmp(0) == Some(Ordering::Greater),
        Op::Gte => matches!(cmp(0), Some(Ordering::Greater | Ordering::Equal)),
        Op::Between => {
            matches!(cmp(0), Some(Ordering::Greater | Ordering::Equal))
                && matches!(cmp(1), Some(Ordering::Less | Ordering::Equal))
        }
        Op::In => (0..f.values.len()).any(|i| cmp(i) == Some(Ordering::Equal)),
        Op::NotIn => (0..f.values.len()).all(|i| cmp(i) != Some(Ordering::Equal)),
        Op::Has => true,
        Op::NotHas => false,
        Op::ContainsToken | Op::NotContainsToken => false,
    }
}

fn query_matches(schema: &TypeSchema, query: &str, rec: &Rec<'_>, scratch: &mut String) -> bool {
    if rec.id.to_string() == query {
        return true;
    }
    schema.searchable.iter().any(|&p| {
        scratch.clear();
        gen_value(schema, &schema.props[p], rec, scratch) && scratch.to_lowercase().contains(query)
    })
}

/// Sort key of a record for a slow (generated-property) sort; `None` sorts last.
fn slow_key(
    schema: &TypeSchema,
    operand: Operand,
    rec: &Rec<'_>,
    scratch: &mut String,
) -> Option<Val> {
    record_val(schema, operand, rec, scratch)
}

fn keep_first<T>(items: &mut Vec<T>, k: usize, mut cmp: impl FnMut(&T, &T) -> Ordering) {
    if k == 0 {
        items.clear();
        return;
    }
    if items.len() > k {
        items.select_nth_unstable_by(k - 1, &mut cmp);
        items.truncate(k);
    }
    items.sort_unstable_by(cmp);
}

/// Calls `visit` with every active record that matches `request`: first the
/// generated (unchanged) ones in the narrowed position range, then the
/// changed and added ones.
fn for_each_match<'a>(
    view: &View<'a>,
    request: &SearchRequest,
    mut visit: impl FnMut(usize, &Rec<'a>),
) {
    let schema = view.schema;
    let count = schema.seed.count;
    let mut scratch = String::new();
    let mut matches = |rec: &Rec<'_>, generated: Option<usize>| -> bool {
        let in_groups = request.groups.is_empty()
            || request.groups.iter().any(|g| {
                generated.is_none_or(|pos| pos >= g.range.0 && pos < g.range.1)
                    && g.filters
                        .iter()
                        .all(|f| filter_matches(schema, f, rec, &mut scratch))
            });
        in_groups
            && request
                .query
                .as_deref()
                .is_none_or(|q| query_matches(schema, q, rec, &mut scratch))
    };
    let (lo, hi) = if request.groups.is_empty() {
        (0, count)
    } else {
        request.groups.iter().fold((count, 0), |(lo, hi), g| {
            (lo.min(g.range.0), hi.max(g.range.1))
        })
    };
    let hi = hi.max(lo);
    // Changed records are skipped here: their timestamps no longer follow
    // their position.
    let mut changed = view
        .muts
        .overrides
        .range(lo..hi)
        .map(|(&p, _)| p)
        .peekable();
    for pos in lo..hi {
        if changed.peek() == Some(&pos) {
            changed.next();
            continue;
        }
        let rec = schema.rec(view.seed, false, pos);
        if matches(&rec, Some(pos)) {
            visit(pos, &rec);
        }
    }
    if view.muts.overrides.is_empty() {
        return;
    }
    let population = view.population();
    let (lo, hi) = if request.groups.is_empty() {
        (0, population)
    } else {
        request.groups.iter().fold((population, 0), |(lo, hi), g| {
            let (a, b) = group_range(&g.filters, population, false);
            (lo.min(a), hi.max(b))
        })
    };
    for (&pos, o) in view.muts.overrides.range(lo..hi.max(lo)) {
        if o.life != Life::Active {
            continue;
        }
        let rec = view.rec(false, pos);
        if matches(&rec, None) {
            visit(pos, &rec);
        }
    }
}

fn run_search(view: &View<'_>, request: &SearchRequest) -> SearchHits {
    let schema = view.schema;
    let (operand, desc) = request.sort.unwrap_or((Operand::Id, false));
    match operand {
        Operand::Id | Operand::Created | Operand::Updated => {
            let mut hits: Vec<(i64, usize)> = Vec::new();
            for_each_match(view, request, |pos, rec| {
                let key = match operand {
                    Operand::Created => rec.created,
                    Operand::Updated => rec.updated,
                    _ => rec.id as i64,
                };
                hits.push((if desc { -key } else { key }, pos));
            });
            let total = hits.len();
            keep_first(&mut hits, SEARCH_CAP, |a, b| a.cmp(b));
            SearchHits {
                total,
                top: hits.into_iter().map(|(_, p)| p).collect(),
            }
        }
        Operand::Prop(_) => {
            let mut hits: Vec<(Option<Val>, usize)> = Vec::new();
            let mut key_scratch = String::new();
            for_each_match(view, request, |pos, rec| {
                hits.push((slow_key(schema, operand, rec, &mut key_scratch), pos));
            });
            let total = hits.len();
            keep_first(&mut hits, SEARCH_CAP, |a, b| {
                let by_key = match (&a.0, &b.0) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Greater,
                    (Some(_), None) => Ordering::Less,
                    (Some(x), Some(y)) => {
                        let o = match (x, y) {
                            (Val::Num(x), Val::Num(y)) => x.total_cmp(y),
                            (Val::Text(x), Val::Text(y)) => x.cmp(y),
                            (Val::Num(_), Val::Text(_)) => Ordering::Less,
                            (Val::Text(_), Val::Num(_)) => Ordering::Greater,
                        };
                        if desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                };
                by_key.then(a.1.cmp(&b.1))
            });
            SearchHits {
                total,
                top: hits.into_iter().map(|(_, p)| p).collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAT: &str = "pat-fake-token";

    async fn get(fake: &HubSpotFake, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new().get(format!("{}{path}", fake.uri()));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request")
    }

    async fn post_json(fake: &HubSpotFake, path: &str, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", fake.uri()))
            .bearer_auth(PAT)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    async fn post_token(fake: &HubSpotFake, form: &[(&str, &str)]) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/oauth/v1/token", fake.uri()))
            .form(form)
            .send()
            .await
            .expect("request")
    }

    async fn body(resp: reqwest::Response) -> Value {
        resp.json().await.expect("json body")
    }

    fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    fn assert_error_body(v: &Value, category: &str) {
        assert_eq!(v["category"], category, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        let id = v["correlationId"].as_str().expect("correlationId");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{v}");
    }

    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn handles_are_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<HubSpotFake>();
    }

    #[tokio::test]
    async fn pagination_walks_all_ids_once() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let client = reqwest::Client::new();
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut req = client
                .get(format!("{}/crm/v3/objects/contacts", fake.uri()))
                .bearer_auth(PAT)
                .query(&[("limit", "100")]);
            if let Some(a) = &after {
                req = req.query(&[("after", a)]);
            }
            let resp = req.send().await.expect("request");
            assert_eq!(resp.status(), 200);
            let page = body(resp).await;
            pages += 1;
            for r in page["results"].as_array().expect("results") {
                ids.push(r["id"].as_str().expect("id").to_string());
                assert_eq!(r["archived"], false);
            }
            match page["paging"]["next"]["after"].as_str() {
                Some(a) => {
                    let link = page["paging"]["next"]["link"].as_str().expect("link");
                    assert!(link.starts_with(&fake.uri()), "{link}");
                    after = Some(a.to_string());
                }
                None => {
                    assert!(page.get("paging").is_none(), "last page has no paging");
                    break;
                }
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(ids, fake.ids("contacts", false));

        // The link reproduces the request with the next cursor.
        let first = body(get(&fake, "/crm/v3/objects/contacts?limit=7", Some(PAT)).await).await;
        let link = first["paging"]["next"]["link"].as_str().expect("link");
        let next = reqwest::Client::new()
            .get(link)
            .bearer_auth(PAT)
            .send()
            .await
            .expect("request");
        let next = body(next).await;
        assert_eq!(next["results"].as_array().map(Vec::len), Some(7));
        assert_eq!(next["results"][0]["id"], "1007");
        // Default limit is 10; served records equal the truth.
        let default = body(get(&fake, "/crm/v3/objects/contacts", Some(PAT)).await).await;
        assert_eq!(default["results"].as_array().map(Vec::len), Some(10));
        let truth = fake.record("contacts", 3);
        let served = &default["results"][3];
        assert_eq!(served["id"], truth["id"]);
        assert_eq!(served["createdAt"], truth["createdAt"]);
        assert_eq!(served["updatedAt"], truth["updatedAt"]);
        for (k, v) in served["properties"].as_object().expect("properties") {
            assert_eq!(v, &truth["properties"][k], "{k}");
        }
    }

    #[tokio::test]
    async fn properties_filter_defaults_and_blanks() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let page = body(get(&fake, "/crm/v3/objects/contacts?limit=3", Some(PAT)).await).await;
        assert_eq!(
            keys(&page["results"][0]["properties"]),
            [
                "createdate",
                "email",
                "firstname",
                "hs_object_id",
                "lastmodifieddate",
                "lastname"
            ]
        );
        let path = "/crm/v3/objects/contacts?limit=100&properties=email,phone,bogus&properties=hs_email_optout";
        let page = body(get(&fake, path, Some(PAT)).await).await;
        for (i, r) in page["results"]
            .as_array()
            .expect("results")
            .iter()
            .enumerate()
        {
            assert_eq!(
                keys(&r["properties"]),
                ["email", "hs_email_optout", "phone"]
            );
            let truth = fake.record("contacts", i);
            for k in ["email", "hs_email_optout", "phone"] {
                assert_eq!(r["properties"][k], truth["properties"][k]);
            }
        }
        let deals = body(get(&fake, "/crm/v3/objects/deals?limit=1", Some(PAT)).await).await;
        assert!(keys(&deals["results"][0]["properties"]).contains(&"dealstage".to_string()));

        // Truth: every value is a string or null; blanks of both kinds occur.
        let (mut nulls, mut empties) = (0, 0);
        for i in 0..250 {
            let r = fake.record("contacts", i);
            let props = r["properties"].as_object().expect("properties");
            assert_eq!(props.len(), 19 + 5);
            for v in props.values() {
                match v {
                    Value::Null => nulls += 1,
                    Value::String(s) if s.is_empty() => empties += 1,
                    Value::String(_) => {}
                    other => panic!("not a string: {other}"),
                }
            }
            assert_eq!(props["hs_object_id"], r["id"]);
            assert_eq!(props["createdate"], r["createdAt"]);
            assert_eq!(props["lastmodifieddate"], r["updatedAt"]);
        }
        assert!(nulls > 50 && empties > 20, "{nulls} {empties}");
        assert_eq!(fake.record("contacts", 250), Value::Null);
        assert_eq!(fake.record("widgets", 0), Value::Null);

        // Same seed, same data; another seed, other data.
        let twin = HubSpotFake::start(FakeConfig::default()).await;
        assert_eq!(twin.record("deals", 5), fake.record("deals", 5));
        let other = HubSpotFake::start(FakeConfig {
            seed: 7,
            ..FakeConfig::default()
        })
        .await;
        assert_ne!(other.record("deals", 5), fake.record("deals", 5));
    }

    #[tokio::test]
    async fn validation_archived_and_not_found() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let resp = get(&fake, "/crm/v3/objects/contacts?limit=101", Some(PAT)).await;
        assert_eq!(resp.status(), 400);
        assert_error_body(&body(resp).await, "VALIDATION_ERROR");
        let resp = get(&fake, "/crm/v3/objects/contacts?after=%%%", Some(PAT)).await;
        assert_eq!(resp.status(), 400);
        let resp = get(&fake, "/crm/v3/objects/widgets", Some(PAT)).await;
        assert_eq!(resp.status(), 400);
        assert_error_body(&body(resp).await, "VALIDATION_ERROR");
        let resp = get(&fake, "/crm/v3/nothing-here", Some(PAT)).await;
        assert_eq!(resp.status(), 404);
        assert_error_body(&body(resp).await, "OBJECT_NOT_FOUND");

        let page = body(
            get(
                &fake,
                "/crm/v3/objects/contacts?archived=true&limit=100",
                Some(PAT),
            )
            .await,
        )
        .await;
        let results = page["results"].as_array().expect("results");
        let ids: Vec<String> = results
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(ids, fake.ids("contacts", true));
        for r in results {
            assert_eq!(r["archived"], true);
            assert!(r["archivedAt"].as_str().is_some());
        }
        // Single object by id, and the singular alias.
        let one = get(
            &fake,
            "/crm/v3/objects/contact/1005?properties=email",
            Some(PAT),
        )
        .await;
        assert_eq!(one.status(), 200);
        let one = body(one).await;
        assert_eq!(
            one["properties"]["email"],
            fake.record("contacts", 5)["properties"]["email"]
        );
        let missing = get(&fake, "/crm/v3/objects/contacts/999999", Some(PAT)).await;
        assert_eq!(missing.status(), 404);
    }

    #[tokio::test]
    async fn auth_missing_unknown_and_expired_tokens() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let resp = get(&fake, "/crm/v3/objects/contacts", None).await;
        assert_eq!(resp.status(), 401);
        let v = body(resp).await;
        assert_error_body(&v, "INVALID_AUTHENTICATION");
        assert_eq!(v["status"], "error");
        let resp = get(&fake, "/crm/v3/objects/contacts", Some("nope")).await;
        assert_eq!(resp.status(), 401);

        let (access, _refresh) = fake.mint_tokens();
        assert_eq!(
            get(&fake, "/crm/v3/objects/contacts", Some(&access))
                .await
                .status(),
            200
        );
        let info = get(&fake, &format!("/oauth/v1/access-tokens/{access}"), None).await;
        assert_eq!(info.status(), 200);
        let info = body(info).await;
        assert_eq!(info["token_type"], "access");
        assert_eq!(info["hub_id"], 62515);
        assert_eq!(info["is_private_distribution"], false);

        fake.expire_access_tokens();
        let resp = get(&fake, "/crm/v3/objects/contacts", Some(&access)).await;
        assert_eq!(resp.status(), 401);
        let v = body(resp).await;
        assert_error_body(&v, "EXPIRED_AUTHENTICATION");
        assert!(v["message"].as_str().is_some_and(|m| m.contains("expired")));
        let info = get(&fake, &format!("/oauth/v1/access-tokens/{access}"), None).await;
        assert_eq!(info.status(), 404);
        assert_error_body(&body(info).await, "OBJECT_NOT_FOUND");
    }

    #[tokio::test]
    async fn oauth_code_exchange_refresh_and_rotation() {
        let fake = HubSpotFake::start(FakeConfig {
            rotate_refresh_tokens: true,
            ..FakeConfig::default()
        })
        .await;
        let code = fake.authorize(&["crm.objects.contacts.read", "oauth"]);
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "http://localhost/callback"),
            ("client_id", "fake-client-id"),
            ("client_secret", "fake-client-secret"),
        ];
        let resp = post_token(&fake, &form).await;
        assert_eq!(resp.status(), 200);
        let tokens = body(resp).await;
        assert_eq!(tokens["token_type"], "bearer");
        assert_eq!(tokens["token_use"], "access_token");
        assert_eq!(tokens["expires_in"], 1800);
        assert_eq!(tokens["hub_id"], 62515);
        assert_eq!(
            tokens["scopes"],
            json!(["crm.objects.contacts.read", "oauth"])
        );
        let access = tokens["access_token"].as_str().expect("access").to_string();
        let refresh1 = tokens["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_string();

        // A code is single use.
        let resp = post_token(&fake, &form).await;
        assert_eq!(resp.status(), 400);
        let v = body(resp).await;
        assert_eq!(v["status"], "BAD_AUTH_CODE");

        let details = get(&fake, "/account-info/v3/details", Some(&access)).await;
        assert_eq!(details.status(), 200);
        assert_eq!(body(details).await["portalId"], 62515);

        // Refresh with HTTP Basic client authentication; rotation.
        let resp = reqwest::Client::new()
            .post(format!("{}/oauth/v1/token", fake.uri()))
            .basic_auth("fake-client-id", Some("fake-client-secret"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh1.as_str()),
            ])
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let refreshed = body(resp).await;
        let refresh2 = refreshed["refresh_token"].as_str().expect("refresh");
        assert_ne!(refresh2, refresh1);
        let access2 = refreshed["access_token"].as_str().expect("access");
        assert_eq!(
            get(&fake, "/crm/v3/owners", Some(access2)).await.status(),
            200
        );

        let stale = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh1.as_str()),
            ("client_id", "fake-client-id"),
            ("client_secret", "fake-client-secret"),
        ];
        let resp = post_token(&fake, &stale).await;
        assert_eq!(resp.status(), 400);
        let v = body(resp).await;
        assert_eq!(v["status"], "BAD_REFRESH_TOKEN");
        assert_eq!(v["message"], "missing or unknown refresh token");
        assert_error_body(&v, "BAD_REFRESH_TOKEN");

        let bad_secret = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh2),
            ("client_id", "fake-client-id"),
            ("client_secret", "wrong"),
        ];
        let resp = post_token(&fake, &bad_secret).await;
        assert_eq!(resp.status(), 400);
        assert_eq!(body(resp).await["category"], "BAD_CLIENT_SECRET");

        let stats = fake.stats();
        assert_eq!(stats.code_exchanges, 1);
        assert_eq!(stats.token_refreshes, 1);
        assert_eq!(stats.token_requests, 5);
        assert_eq!(stats.per_path.get("POST /oauth/v1/token"), Some(&5));
    }

    #[tokio::test]
    async fn refresh_tokens_are_kept_without_rotation() {
        let fake = HubSpotFake::start(FakeConfig {
            access_token_ttl: Duration::from_secs(60),
            ..FakeConfig::default()
        })
        .await;
        let (_, refresh) = fake.mint_tokens();
        for _ in 0..2 {
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
                ("client_id", "fake-client-id"),
                ("client_secret", "fake-client-secret"),
            ];
            let v = body(post_token(&fake, &form).await).await;
            assert_eq!(v["refresh_token"], refresh.as_str());
            assert_eq!(v["expires_in"], 60);
        }
        assert_eq!(fake.stats().token_refreshes, 2);
    }

    #[tokio::test]
    async fn rolling_window_rate_limit_with_headers() {
        let fake = HubSpotFake::start(FakeConfig {
            rate_limit: Some(FakeRateLimit::new(3, Duration::from_millis(300))),
            ..FakeConfig::default()
        })
        .await;
        for remaining in ["2", "1", "0"] {
            let resp = get(&fake, "/crm/v3/objects/contacts?limit=1", Some(PAT)).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(
                header(&resp, "x-hubspot-ratelimit-max").as_deref(),
                Some("3")
            );
            assert_eq!(
                header(&resp, "x-hubspot-ratelimit-remaining").as_deref(),
                Some(remaining)
            );
            assert_eq!(
                header(&resp, "x-hubspot-ratelimit-interval-milliseconds").as_deref(),
                Some("300")
            );
            assert_eq!(
                header(&resp, "x-hubspot-ratelimit-daily").as_deref(),
                Some("1000000")
            );
            assert!(header(&resp, "x-hubspot-ratelimit-daily-remaining").is_some());
        }
        let resp = get(&fake, "/crm/v3/objects/contacts?limit=1", Some(PAT)).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(
            header(&resp, "x-hubspot-ratelimit-remaining").as_deref(),
            Some("0")
        );
        let v = body(resp).await;
        assert_eq!(v["status"], "error");
        assert_eq!(v["errorType"], "RATE_LIMIT");
        assert_eq!(v["policyName"], "TEN_SECONDLY_ROLLING");
        assert_eq!(
            v["message"],
            "You have reached your ten_secondly_rolling limit."
        );
        assert!(v["groupName"].as_str().is_some());
        let stats = fake.stats();
        assert_eq!(stats.rate_limited, 1);
        assert_eq!(stats.max_in_window, 3);

        tokio::time::sleep(Duration::from_millis(320)).await;
        // OAuth calls carry the interval headers but not the daily pair.
        let (access, _) = fake.mint_tokens();
        let resp = get(&fake, "/crm/v3/objects/contacts?limit=1", Some(&access)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "x-hubspot-ratelimit-max").as_deref(),
            Some("3")
        );
        assert!(header(&resp, "x-hubspot-ratelimit-daily").is_none());
        assert_eq!(
            get(&fake, "/crm/v3/objects/contacts?limit=1", Some(PAT))
                .await
                .status(),
            200
        );
        assert_eq!(fake.stats().max_in_window, 3);

        fake.set_rate_limit(None);
        let resp = get(&fake, "/crm/v3/objects/contacts?limit=1", Some(&access)).await;
        assert!(header(&resp, "x-hubspot-ratelimit-max").is_none());
    }

    #[tokio::test]
    async fn search_rate_limit_is_secondly() {
        let fake = HubSpotFake::start(FakeConfig {
            search_rate_limit: Some(FakeRateLimit::new(2, Duration::from_secs(5))),
            ..FakeConfig::default()
        })
        .await;
        let req =
            json!({"filterGroups": [], "sorts": [], "properties": [], "limit": 1, "after": "0"});
        for _ in 0..2 {
            let resp = post_json(&fake, "/crm/v3/objects/contacts/search", &req).await;
            assert_eq!(resp.status(), 200);
        }
        let resp = post_json(&fake, "/crm/v3/objects/contacts/search", &req).await;
        assert_eq!(resp.status(), 429);
        let v = body(resp).await;
        assert_eq!(v["policyName"], "SECONDLY");
        assert_eq!(v["message"], "You have reached your secondly limit.");
        assert_eq!(
            get(&fake, "/crm/v3/objects/contacts", Some(PAT))
                .await
                .status(),
            200
        );
        assert_eq!(fake.stats().rate_limited, 1);
    }

    #[tokio::test]
    async fn huge_properties_answer_414() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let names: Vec<String> = (0..600).map(|i| format!("property_{i:04}")).collect();
        let long = names.join(",");
        assert!(long.len() > 7000);
        let resp = get(
            &fake,
            &format!("/crm/v3/objects/contacts?properties={long}"),
            Some(PAT),
        )
        .await;
        assert_eq!(resp.status(), 414);
        assert!(resp.bytes().await.expect("body").is_empty());
        let short = names[..300].join(",");
        let resp = get(
            &fake,
            &format!("/crm/v3/objects/contacts?properties={short}"),
            Some(PAT),
        )
        .await;
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn associations_batch_read_pages_and_lists_as_the_v4_spec() {
        let mut cfg = FakeConfig::default();
        cfg.objects
            .insert("companies".into(), ObjectSeed::new(700, 0));
        let fake = HubSpotFake::start(cfg).await;
        let path = "/crm/v4/associations/contacts/companies/batch/read";
        // Contact 1000 has 700 companies: a first page of 500 and a cursor.
        let resp = post_json(
            &fake,
            path,
            &json!({"inputs": [{"id": "1000"}, {"id": "999999"}]}),
        )
        .await;
        assert_eq!(resp.status(), 207);
        let v = body(resp).await;
        assert_eq!(v["status"], "COMPLETE");
        let r = &v["results"][0];
        assert_eq!(r["from"]["id"], "1000");
        assert_eq!(r["to"].as_array().expect("to").len(), 500);
        assert_eq!(r["to"][0]["toObjectId"], "1000");
        assert_eq!(r["to"][0]["associationTypes"][0]["typeId"], 279);
        let after = r["paging"]["next"]["after"]
            .as_str()
            .expect("after")
            .to_owned();
        // An unknown id: 207 with NO_ASSOCIATIONS_FOUND, HubSpot's shape.
        assert_eq!(v["numErrors"], 1);
        let e = &v["errors"][0];
        assert_eq!(e["category"], "OBJECT_NOT_FOUND");
        assert_eq!(e["subCategory"], "crm.associations.NO_ASSOCIATIONS_FOUND");
        assert_eq!(e["context"]["fromObjectId"][0], "999999");
        // The second page, by `after` on the input.
        let resp = post_json(
            &fake,
            path,
            &json!({"inputs": [{"id": "1000", "after": after}]}),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let v = body(resp).await;
        assert_eq!(v["results"][0]["to"].as_array().expect("to").len(), 200);
        assert!(v["results"][0].get("paging").is_none());
        // The reverse direction agrees, and the per-object list pages too.
        let resp = get(
            &fake,
            "/crm/v4/objects/companies/1005/associations/contacts",
            Some(PAT),
        )
        .await;
        let v = body(resp).await;
        let ids: Vec<&str> = v["results"]
            .as_array()
            .expect("results")
            .iter()
            .filter_map(|r| r["toObjectId"].as_str())
            .collect();
        assert!(ids.contains(&"1000"), "{v}");
        let truth: Vec<String> = fake
            .associations("companies", "contacts")
            .into_iter()
            .filter(|(f, _)| f == "1005")
            .map(|(_, t)| t)
            .collect();
        assert_eq!(ids, truth);
        let resp = get(
            &fake,
            "/crm/v4/objects/contacts/1000/associations/companies?limit=300",
            Some(PAT),
        )
        .await;
        let v = body(resp).await;
        assert_eq!(v["results"].as_array().expect("results").len(), 300);
        assert!(v["paging"]["next"]["after"].is_string());
        // More than 1,000 inputs: 400.
        let inputs: Vec<Value> = (0..1_001).map(|i| json!({"id": i.to_string()})).collect();
        let resp = post_json(&fake, path, &json!({"inputs": inputs})).await;
        assert_eq!(resp.status(), 400);
        assert_error_body(&body(resp).await, "VALIDATION_ERROR");
        // Archiving a company hides its associations; dissociate and
        // associate change both directions.
        assert!(fake
            .associations("contacts", "companies")
            .contains(&("1000".into(), "1003".into())));
        fake.archive("companies", 3, 1_700_000_000_000);
        assert!(!fake
            .associations("contacts", "companies")
            .contains(&("1000".into(), "1003".into())));
        assert!(fake.dissociate("companies", 4, "contacts", 0));
        assert!(!fake.dissociate("companies", 4, "contacts", 0));
        assert!(!fake
            .associations("contacts", "companies")
            .contains(&("1000".into(), "1004".into())));
        assert!(fake.associate("contacts", 0, "companies", 4));
        assert!(fake
            .associations("companies", "contacts")
            .contains(&("1004".into(), "1000".into())));
        assert_eq!(
            fake.stats().association_batch_sizes,
            vec![2, 1],
            "the refused one is not served"
        );
    }

    #[tokio::test]
    async fn batch_read_partial_errors() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let req = json!({
            "inputs": [{"id": "1000"}, {"id": "1001"}, {"id": "5"}, {"id": "900000000"}],
            "properties": ["email"],
            "propertiesWithHistory": ["email"],
        });
        let resp = post_json(&fake, "/crm/v3/objects/contacts/batch/read", &req).await;
        assert_eq!(resp.status(), 207);
        let v = body(resp).await;
        assert_eq!(v["status"], "COMPLETE");
        assert_eq!(v["results"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["numErrors"], 1);
        assert_eq!(v["errors"][0]["category"], "OBJECT_NOT_FOUND");
        assert_eq!(v["errors"][0]["context"]["ids"], json!(["5", "900000000"]));
        assert!(v["startedAt"].as_str().is_some() && v["completedAt"].as_str().is_some());
        assert_eq!(keys(&v["results"][0]["properties"]), ["email"]);
        assert!(v["results"][0]["propertiesWithHistory"]["email"].is_array());

        let ok =
            json!({"inputs": [{"id": "900000001"}], "properties": [], "propertiesWithHistory": []});
        let resp = post_json(
            &fake,
            "/crm/v3/objects/contacts/batch/read?archived=true",
            &ok,
        )
        .await;
        assert_eq!(resp.status(), 200);
        let v = body(resp).await;
        assert!(v.get("errors").is_none());
        assert_eq!(v["results"][0]["archived"], true);

        let many: Vec<Value> = (0..101)
            .map(|i| json!({"id": (1000 + i).to_string()}))
            .collect();
        let resp = post_json(
            &fake,
            "/crm/v3/objects/contacts/batch/read",
            &json!({"inputs": many}),
        )
        .await;
        assert_eq!(resp.status(), 400);
        let resp = reqwest::Client::new()
            .post(format!("{}/crm/v3/objects/contacts/batch/read", fake.uri()))
            .bearer_auth(PAT)
            .body("{not json")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 400);
        assert_error_body(&body(resp).await, "VALIDATION_ERROR");
    }

    #[tokio::test]
    async fn search_windows_sorts_and_cap() {
        let mut config = FakeConfig::default();
        config
            .objects
            .insert("contacts".into(), ObjectSeed::new(10_050, 0));
        let fake = HubSpotFake::start(config).await;
        let updated: Vec<(String, String)> = (0..10_050)
            .map(|i| {
                let r = fake.record("contacts", i);
                let id = r["id"].as_str().unwrap_or_default().to_string();
                let at = r["updatedAt"].as_str().unwrap_or_default().to_string();
                (at, id)
            })
            .collect();
        let mut sorted = updated.clone();
        sorted.sort();
        let threshold = sorted[sorted.len() - 450].0.clone();
        let mut expected: Vec<(String, String)> = updated
            .iter()
            .filter(|(at, _)| *at >= threshold)
            .cloned()
            .collect();
        expected.sort_by(|a, b| {
            a.0.cmp(&b.0).then(
                a.1.parse::<u64>()
                    .unwrap_or(0)
                    .cmp(&b.1.parse::<u64>().unwrap_or(0)),
            )
        });

        // Incremental window: lastmodifieddate >= threshold, ascending.
        let mut after = "0".to_string();
        let mut seen = Vec::new();
        loop {
            let req = json!({
                "filterGroups": [{"filters": [
                    {"propertyName": "lastmodifieddate", "operator": "GTE", "value": threshold}
                ]}],
                "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
                "properties": ["lastmodifieddate"],
                "limit": 200,
                "after": after,
            });
            let v = body(post_json(&fake, "/crm/v3/objects/contacts/search", &req).await).await;
            assert_eq!(v["total"].as_u64(), Some(expected.len() as u64));
            for r in v["results"].as_array().expect("results") {
                seen.push((
                    r["properties"]["lastmodifieddate"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    r["id"].as_str().unwrap_or_default().to_string(),
                ));
            }
            match v["paging"]["next"]["after"].as_str() {
                Some(a) => after = a.to_string(),
                None => break,
            }
        }
        assert_eq!(seen, expected);

        // Plain-string sorts, hs_object_id filters, BETWEEN in epoch millis.
        let req = json!({
            "filterGroups": [{"filters": [
                {"propertyName": "hs_object_id", "operator": "GT", "value": "11044"}
            ]}, {"filters": [
                {"propertyName": "hs_object_id", "operator": "BETWEEN", "value": "1000", "highValue": "1001"}
            ]}],
            "sorts": ["hs_object_id"],
            "properties": [], "limit": 10, "after": null,
        });
        let v = body(post_json(&fake, "/crm/v3/objects/contacts/search", &req).await).await;
        let ids: Vec<&str> = v["results"]
            .as_array()
            .expect("results")
            .iter()
            .filter_map(|r| r["id"].as_str())
            .collect();
        assert_eq!(
            ids,
            ["1000", "1001", "11045", "11046", "11047", "11048", "11049"]
        );
        assert!(v.get("paging").is_none());

        // The 10,000-result cap.
        let all = |after: &str| json!({"filterGroups": [], "sorts": ["hs_object_id"], "properties": ["email"], "limit": 200, "after": after});
        let v = body(post_json(&fake, "/crm/v3/objects/contacts/search", &all("9900")).await).await;
        assert_eq!(v["total"], 10_050);
        assert_eq!(v["results"].as_array().map(Vec::len), Some(100));
        assert_eq!(v["results"][0]["id"], "10900");
        assert_eq!(v["paging"]["next"]["after"], "10000");
        let resp = post_json(&fake, "/crm/v3/objects/contacts/search", &all("10000")).await;
        assert_eq!(resp.status(), 400);
        assert_error_body(&body(resp).await, "VALIDATION_ERROR");
        let mut too_big = all("0");
        too_big["limit"] = json!(201);
        let resp = post_json(&fake, "/crm/v3/objects/contacts/search", &too_big).await;
        assert_eq!(resp.status(), 400);
        let bad_prop = json!({"filterGroups": [{"filters": [{"propertyName": "nope", "operator": "EQ", "value": "1"}]}]});
        let resp = post_json(&fake, "/crm/v3/objects/contacts/search", &bad_prop).await;
        assert_eq!(resp.status(), 400);
    }

    #[tokio::test]
    async fn fault_injection() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        fake.fail_next(2, 503);
        for _ in 0..2 {
            let resp = get(&fake, "/crm/v3/objects/contacts", Some(PAT)).await;
            assert_eq!(resp.status(), 503);
            assert_error_body(&body(resp).await, "SERVICE_UNAVAILABLE");
        }
        assert_eq!(
            get(&fake, "/crm/v3/objects/contacts", Some(PAT))
                .await
                .status(),
            200
        );

        fake.fail_next_with_retry_after(1, 7);
        let resp = get(&fake, "/crm/v3/objects/contacts", Some(PAT)).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(header(&resp, "retry-after").as_deref(), Some("7"));
        assert_eq!(body(resp).await["policyName"], "TEN_SECONDLY_ROLLING");
        assert_eq!(fake.stats().rate_limited, 1);

        fake.token_endpoint_fail_next(1, 502);
        let (_, refresh) = fake.mint_tokens();
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", "fake-client-id"),
            ("client_secret", "fake-client-secret"),
        ];
        assert_eq!(post_token(&fake, &form).await.status(), 502);
        assert_eq!(post_token(&fake, &form).await.status(), 200);

        // Malformed page 1 (records 10..20 with limit 10).
        fake.malformed_page("contacts", 1);
        let p0 = body(get(&fake, "/crm/v3/objects/contacts?limit=10", Some(PAT)).await).await;
        assert!(p0["results"][3]["properties"].is_object());
        let after = p0["paging"]["next"]["after"]
            .as_str()
            .expect("after")
            .to_string();
        let path = format!("/crm/v3/objects/contacts?limit=10&after={after}");
        let p1 = body(get(&fake, &path, Some(PAT)).await).await;
        assert!(p1["results"][3]["properties"].is_string());
        assert!(p1["results"][2]["properties"].is_object());

        // Repeating cursor from page 2 on.
        fake.repeat_cursor("contacts", 2);
        let after2 = p1["paging"]["next"]["after"]
            .as_str()
            .expect("after")
            .to_string();
        let path = format!("/crm/v3/objects/contacts?limit=10&after={after2}");
        let p2 = body(get(&fake, &path, Some(PAT)).await).await;
        assert_eq!(
            p2["paging"]["next"]["after"].as_str(),
            Some(after2.as_str())
        );
        fake.clear_faults();
        let p2 = body(get(&fake, &path, Some(PAT)).await).await;
        assert_ne!(
            p2["paging"]["next"]["after"].as_str(),
            Some(after2.as_str())
        );

        fake.set_latency(Duration::from_millis(80));
        let started = Instant::now();
        assert_eq!(
            get(&fake, "/account-info/v3/details", Some(PAT))
                .await
                .status(),
            200
        );
        assert!(started.elapsed() >= Duration::from_millis(80));
        assert_eq!(fake.config().latency, Duration::from_millis(80));

        let stats = fake.stats();
        assert!(stats.requests >= 9);
        fake.reset_stats();
        assert_eq!(fake.stats(), FakeStats::default());
    }

    #[tokio::test]
    async fn metadata_endpoints() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let v = body(get(&fake, "/crm/v3/properties/contacts", Some(PAT)).await).await;
        let props = v["results"].as_array().expect("results");
        assert_eq!(props.len(), 24);
        let mut types: Vec<&str> = props.iter().filter_map(|p| p["type"].as_str()).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(
            types,
            [
                "bool",
                "date",
                "datetime",
                "enumeration",
                "number",
                "phone_number",
                "string"
            ]
        );
        for p in props {
            for field in [
                "name",
                "label",
                "type",
                "fieldType",
                "groupName",
                "description",
            ] {
                assert!(p[field].is_string(), "{field} in {p}");
            }
            assert!(p["modificationMetadata"]["readOnlyValue"].is_boolean());
            // HubSpot's hs_merged_object_ids is an enumeration without options.
            if p["type"] == "enumeration"
                && p["externalOptions"] == false
                && p["name"] != "hs_merged_object_ids"
            {
                let options = p["options"].as_array().expect("options");
                assert!(!options.is_empty(), "{p}");
                assert!(options
                    .iter()
                    .all(|o| o["label"].is_string() && o["hidden"] == false));
            }
        }
        let custom =
            body(get(&fake, "/crm/v3/properties/deals/custom_prop_4", Some(PAT)).await).await;
        assert_eq!(custom["fieldType"], "calculation_equation");
        assert_eq!(custom["calculated"], true);

        // Owners: paged by `after`, limit capped at 500.
        let mut owners = Vec::new();
        let mut path = "/crm/v3/owners?limit=5".to_string();
        loop {
            let v = body(get(&fake, &path, Some(PAT)).await).await;
            for o in v["results"].as_array().expect("results") {
                assert_eq!(o["type"], "PERSON");
                owners.push(o["id"].as_str().unwrap_or_default().to_string());
            }
            match v["paging"]["next"]["after"].as_str() {
                Some(a) => path = format!("/crm/v3/owners?limit=5&after={a}"),
                None => break,
            }
        }
        assert_eq!(owners.len(), 12);
        assert_eq!(
            get(&fake, "/crm/v3/owners?limit=501", Some(PAT))
                .await
                .status(),
            400
        );
        let deal = fake.record("deals", 0);
        let owner_ids: HashSet<&String> = owners.iter().collect();
        for i in 0..80 {
            if let Some(owner) = fake.record("deals", i)["properties"]["hubspot_owner_id"].as_str()
            {
                if !owner.is_empty() {
                    assert!(owner_ids.contains(&owner.to_string()), "{owner}");
                }
            }
        }

        // Pipelines: deal stages match the pipeline of each deal.
        let v = body(get(&fake, "/crm/v3/pipelines/deals", Some(PAT)).await).await;
        let pipelines = v["results"].as_array().expect("results");
        assert_eq!(pipelines.len(), 2);
        assert!(pipelines[0]["stages"][0]["metadata"]["probability"].is_string());
        let pipeline = deal["properties"]["pipeline"].as_str().expect("pipeline");
        let stage = deal["properties"]["dealstage"].as_str().expect("stage");
        let p = pipelines
            .iter()
            .find(|p| p["id"] == pipeline)
            .expect("known pipeline");
        assert!(p["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .any(|s| s["id"] == stage));
        let v = body(get(&fake, "/crm/v3/pipelines/tickets", Some(PAT)).await).await;
        assert_eq!(
            v["results"][0]["stages"][3]["metadata"]["ticketState"],
            "CLOSED"
        );

        let v = body(get(&fake, "/account-info/v3/details", Some(PAT)).await).await;
        assert_eq!(v["portalId"], 62515);
        assert_eq!(v["companyCurrency"], "USD");
    }

    // ----- mutations -----

    /// 2030-01-01T00:00:00Z, later than every generated timestamp.
    const T1: i64 = 1_893_456_000_000;

    async fn search(fake: &HubSpotFake, object_type: &str, req: &Value) -> Value {
        let path = format!("/crm/v3/objects/{object_type}/search");
        let resp = post_json(fake, &path, req).await;
        assert_eq!(resp.status(), 200);
        body(resp).await
    }

    /// Every record of a list walk that starts at `path`, following links.
    async fn walk(fake: &HubSpotFake, path: &str) -> Vec<Value> {
        let client = reqwest::Client::new();
        let mut url = format!("{}{path}", fake.uri());
        let mut records = Vec::new();
        loop {
            let resp = client
                .get(&url)
                .bearer_auth(PAT)
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status(), 200);
            let page = body(resp).await;
            records.extend(page["results"].as_array().expect("results").iter().cloned());
            match page["paging"]["next"]["link"].as_str() {
                Some(link) => url = link.to_string(),
                None => return records,
            }
        }
    }

    fn ids_of(records: &Value) -> Vec<String> {
        records
            .as_array()
            .expect("array")
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn since(property: &str, ms: i64) -> Value {
        json!({
            "filterGroups": [{"filters": [
                {"propertyName": property, "operator": "GTE", "value": ms.to_string()}
            ]}],
            "sorts": [{"propertyName": property, "direction": "ASCENDING"}],
            "properties": ["firstname", property, "hs_merged_object_ids"],
            "limit": 200,
        })
    }

    fn versioned(base: &Value, version: u32) -> String {
        match base.as_str() {
            Some(s) if !s.is_empty() => format!("{s} (v{version})"),
            _ => format!("(v{version})"),
        }
    }

    #[tokio::test]
    async fn touch_updates_every_endpoint() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let window = since("lastmodifieddate", T1);
        assert_eq!(search(&fake, "contacts", &window).await["total"], 0);
        let before = fake.record("contacts", 3);
        let neighbour = fake.record("contacts", 4);
        fake.touch("contacts", 3, T1 + 5);
        fake.touch("contacts", 7, T1);

        // Search (the cached empty answer is gone), sorted with the new times.
        let v = search(&fake, "contacts", &window).await;
        assert_eq!(v["total"], 2);
        assert_eq!(ids_of(&v["results"]), ["1007", "1003"]);
        let hit = &v["results"][1];
        let name = versioned(&before["properties"]["firstname"], 1);
        assert_eq!(hit["properties"]["firstname"], name.as_str());
        assert_eq!(hit["properties"]["lastmodifieddate"], iso(T1 + 5));
        assert_eq!(hit["updatedAt"], iso(T1 + 5));
        assert_eq!(hit["createdAt"], before["createdAt"]);

        // List, get and batch read serve the same record as the truth.
        let truth = fake.record("contacts", 3);
        assert_eq!(truth["properties"]["firstname"], name.as_str());
        assert_eq!(truth["properties"]["email"], before["properties"]["email"]);
        let page = body(get(&fake, "/crm/v3/objects/contacts?limit=10", Some(PAT)).await).await;
        assert_eq!(page["results"][3]["updatedAt"], iso(T1 + 5));
        assert_eq!(page["results"][3]["properties"]["firstname"], name.as_str());
        let all = walk(&fake, "/crm/v3/objects/contacts?limit=100&properties=firstname,lastmodifieddate,email,createdate,hs_object_id,lastname,phone").await;
        assert_eq!(all.len(), 250);
        for (k, v) in all[3]["properties"].as_object().expect("properties") {
            assert_eq!(v, &truth["properties"][k], "{k}");
        }
        let one = body(get(&fake, "/crm/v3/objects/contacts/1003", Some(PAT)).await).await;
        assert_eq!(one["properties"]["lastmodifieddate"], iso(T1 + 5));
        let req = json!({"inputs": [{"id": "1003"}], "properties": ["firstname"]});
        let resp = post_json(&fake, "/crm/v3/objects/contacts/batch/read", &req).await;
        assert_eq!(resp.status(), 200);
        let v = body(resp).await;
        assert_eq!(v["results"][0]["properties"]["firstname"], name.as_str());
        assert_eq!(v["results"][0]["updatedAt"], iso(T1 + 5));
        assert_eq!(fake.record("contacts", 4), neighbour);

        // A second touch: new version, new order.
        fake.touch("contacts", 3, T1 - 1);
        let truth = fake.record("contacts", 3);
        let name = versioned(&before["properties"]["firstname"], 2);
        assert_eq!(truth["properties"]["firstname"], name.as_str());
        let mut older = since("lastmodifieddate", T1 - 1);
        older["properties"] = json!(["firstname"]);
        let v = search(&fake, "contacts", &older).await;
        assert_eq!(ids_of(&v["results"]), ["1003", "1007"]);
        assert_eq!(v["results"][0]["properties"]["firstname"], name.as_str());
        let v = search(&fake, "contacts", &json!({"query": "(v2)", "limit": 5})).await;
        assert_eq!(ids_of(&v["results"]), ["1003"]);

        // Other types version their name-like property.
        assert_eq!(
            fake.versioned_property("companies").as_deref(),
            Some("name")
        );
        assert_eq!(
            fake.versioned_property("deals").as_deref(),
            Some("dealname")
        );
        assert_eq!(
            fake.versioned_property("tickets").as_deref(),
            Some("subject")
        );
        assert_eq!(fake.versioned_property("widgets"), None);
        let company = fake.record("companies", 0);
        fake.touch("companies", 0, T1);
        let touched = fake.record("companies", 0);
        assert_eq!(touched["properties"]["hs_lastmodifieddate"], iso(T1));
        assert_eq!(
            touched["properties"]["name"],
            versioned(&company["properties"]["name"], 1)
        );
        let v = search(&fake, "companies", &since("hs_lastmodifieddate", T1)).await;
        assert_eq!(ids_of(&v["results"]), ["1000"]);
    }

    #[tokio::test]
    async fn archive_moves_records_to_the_archived_listing() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let all_by_id = json!({"sorts": ["hs_object_id"], "properties": [], "limit": 1});
        assert_eq!(search(&fake, "contacts", &all_by_id).await["total"], 250);
        fake.archive("contacts", 7, T1);
        fake.archive("contacts", 2, T1 + 1);
        fake.archive("contacts", 249, T1 + 2);

        let active = walk(&fake, "/crm/v3/objects/contacts?limit=3&properties=email").await;
        let active = ids_of(&Value::Array(active));
        assert_eq!(active.len(), 247);
        assert_eq!(active, fake.ids("contacts", false));
        assert!(!active
            .iter()
            .any(|id| ["1002", "1007", "1249"].contains(&id.as_str())));
        assert_eq!(active.last().map(String::as_str), Some("1248"));

        // The archived listing: archived active records first, paged across.
        let archived = walk(&fake, "/crm/v3/objects/contacts?archived=true&limit=2").await;
        let ids = ids_of(&Value::Array(archived.clone()));
        assert_eq!(ids, fake.ids("contacts", true));
        assert_eq!(
            ids,
            [
                "1002",
                "1007",
                "1249",
                "900000000",
                "900000001",
                "900000002",
                "900000003",
                "900000004"
            ]
        );
        assert!(archived.iter().all(|r| r["archived"] == true));
        assert_eq!(archived[1]["archivedAt"], iso(T1));
        assert_eq!(archived[1]["updatedAt"], iso(T1));
        let truth = fake.record("contacts", 7);
        assert_eq!(fake.record_by_id("contacts", "1007").as_ref(), Some(&truth));
        for key in ["id", "archived", "archivedAt", "createdAt", "updatedAt"] {
            assert_eq!(archived[1][key], truth[key], "{key}");
        }
        for (k, v) in archived[1]["properties"].as_object().expect("properties") {
            assert_eq!(v, &truth["properties"][k], "{k}");
        }

        // Batch read answers it in errors; with archived=true it is there.
        let req = json!({"inputs": [{"id": "1006"}, {"id": "1007"}], "properties": ["email"]});
        let resp = post_json(&fake, "/crm/v3/objects/contacts/batch/read", &req).await;
        assert_eq!(resp.status(), 207);
        let v = body(resp).await;
        assert_eq!(ids_of(&v["results"]), ["1006"]);
        assert_eq!(v["errors"][0]["category"], "OBJECT_NOT_FOUND");
        assert_eq!(v["errors"][0]["context"]["ids"], json!(["1007"]));
        let req = json!({"inputs": [{"id": "1007"}, {"id": "900000001"}, {"id": "1007"}]});
        let path = "/crm/v3/objects/contacts/batch/read?archived=true";
        let resp = post_json(&fake, path, &req).await;
        assert_eq!(resp.status(), 200);
        let v = body(resp).await;
        assert_eq!(ids_of(&v["results"]), ["1007", "900000001"]);
        assert_eq!(v["results"][0]["archived"], true);
        assert_eq!(v["results"][0]["archivedAt"], iso(T1));

        // Get and search.
        let resp = get(&fake, "/crm/v3/objects/contacts/1007", Some(PAT)).await;
        assert_eq!(resp.status(), 404);
        let resp = get(
            &fake,
            "/crm/v3/objects/contacts/1007?archived=true",
            Some(PAT),
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(body(resp).await["archivedAt"], iso(T1));
        assert_eq!(search(&fake, "contacts", &all_by_id).await["total"], 247);
        let v = search(&fake, "contacts", &since("lastmodifieddate", T1)).await;
        assert_eq!(v["total"], 0);
    }

    #[tokio::test]
    async fn merge_hides_the_loser_and_marks_the_survivor() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let prop = body(
            get(
                &fake,
                "/crm/v3/properties/deals/hs_merged_object_ids",
                Some(PAT),
            )
            .await,
        )
        .await;
        assert_eq!(prop["type"], "enumeration");
        assert_eq!(prop["fieldType"], "checkbox");
        assert!(fake
            .property_names("tickets")
            .contains(&"hs_merged_object_ids".to_string()));
        let survivor = fake.record("contacts", 20);
        assert_eq!(survivor["properties"]["hs_merged_object_ids"], Value::Null);

        fake.merge("contacts", 10, 20, T1);
        let active = fake.ids("contacts", false);
        assert_eq!(active.len(), 249);
        assert!(!active.contains(&"1010".to_string()));
        assert!(!fake.ids("contacts", true).contains(&"1010".to_string()));
        let listed = walk(&fake, "/crm/v3/objects/contacts?archived=true&limit=100").await;
        assert_eq!(listed.len(), 5);
        let listed = walk(
            &fake,
            "/crm/v3/objects/contacts?limit=100&properties=hs_merged_object_ids,firstname",
        )
        .await;
        assert_eq!(ids_of(&Value::Array(listed.clone())), active);
        let merged: Vec<&Value> = listed
            .iter()
            .filter(|r| !r["properties"]["hs_merged_object_ids"].is_null())
            .collect();
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0]["id"], "1020");
        assert_eq!(merged[0]["properties"]["hs_merged_object_ids"], "1010");
        assert_eq!(merged[0]["updatedAt"], iso(T1));
        let name = versioned(&survivor["properties"]["firstname"], 1);
        assert_eq!(merged[0]["properties"]["firstname"], name.as_str());

        // Search sees the survivor's new time and its merged ids.
        let v = search(&fake, "contacts", &since("lastmodifieddate", T1)).await;
        assert_eq!(ids_of(&v["results"]), ["1020"]);
        assert_eq!(
            v["results"][0]["properties"]["hs_merged_object_ids"],
            "1010"
        );
        let has = json!({"filterGroups": [{"filters": [
            {"propertyName": "hs_merged_object_ids", "operator": "HAS_PROPERTY"}
        ]}]});
        assert_eq!(
            ids_of(&search(&fake, "contacts", &has).await["results"]),
            ["1020"]
        );

        // Get follows the merge; batch read does not; the truth knows.
        let v = body(get(&fake, "/crm/v3/objects/contacts/1010", Some(PAT)).await).await;
        assert_eq!(v["id"], "1020");
        let resp = get(
            &fake,
            "/crm/v3/objects/contacts/1010?archived=true",
            Some(PAT),
        )
        .await;
        assert_eq!(resp.status(), 404);
        let req = json!({"inputs": [{"id": "1010"}, {"id": "1020"}]});
        let resp = post_json(&fake, "/crm/v3/objects/contacts/batch/read", &req).await;
        assert_eq!(resp.status(), 207);
        let v = body(resp).await;
        assert_eq!(ids_of(&v["results"]), ["1020"]);
        assert_eq!(v["errors"][0]["context"]["ids"], json!(["1010"]));
        assert_eq!(
            fake.merged_into("contacts", "1010").as_deref(),
            Some("1020")
        );
        assert_eq!(fake.merged_into("contacts", "1020"), None);
        assert_eq!(fake.record("contacts", 10), Value::Null);
        assert_eq!(fake.record_by_id("contacts", "1010"), None);

        // Chains: the survivor merged on carries every merged id.
        fake.merge("contacts", 20, 30, T1 + 1);
        fake.merge("contacts", 40, 30, T1 + 2);
        let last = fake.record("contacts", 30);
        assert_eq!(last["properties"]["hs_merged_object_ids"], "1010;1020;1040");
        assert_eq!(last["updatedAt"], iso(T1 + 2));
        assert_eq!(
            fake.merged_into("contacts", "1010").as_deref(),
            Some("1030")
        );
        let v = body(get(&fake, "/crm/v3/objects/contacts/1010", Some(PAT)).await).await;
        assert_eq!(v["id"], "1030");
        let all = json!({"sorts": ["hs_object_id"], "properties": [], "limit": 1});
        assert_eq!(search(&fake, "contacts", &all).await["total"], 247);
        assert_eq!(fake.ids("contacts", false).len(), 247);
    }

    #[tokio::test]
    async fn add_appends_records_with_new_ids() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        assert_eq!(fake.add("contacts", 3, T1), 250..253);
        let ids = fake.ids("contacts", false);
        assert_eq!(ids.len(), 253);
        assert_eq!(ids[250..], ["1250", "1251", "1252"]);
        let listed = walk(&fake, "/crm/v3/objects/contacts?limit=100").await;
        assert_eq!(ids_of(&Value::Array(listed.clone())), ids);
        let added = fake.record("contacts", 251);
        assert_eq!(added["createdAt"], iso(T1));
        assert_eq!(added["updatedAt"], iso(T1));
        assert_eq!(added["properties"]["createdate"], iso(T1));
        assert_eq!(added["properties"]["hs_object_id"], "1251");
        assert_eq!(
            listed[251]["properties"],
            json!({
                "createdate": iso(T1),
                "email": added["properties"]["email"],
                "firstname": added["properties"]["firstname"],
                "hs_object_id": "1251",
                "lastmodifieddate": iso(T1),
                "lastname": added["properties"]["lastname"],
            })
        );

        // Search by creation time; ties (one creation time) go by id.
        let v = search(&fake, "contacts", &since("createdate", T1)).await;
        assert_eq!(v["total"], 3);
        assert_eq!(ids_of(&v["results"]), ["1250", "1251", "1252"]);
        let mut desc = since("createdate", T1);
        desc["sorts"] = json!([{"propertyName": "createdate", "direction": "DESCENDING"}]);
        assert_eq!(
            ids_of(&search(&fake, "contacts", &desc).await["results"]),
            ["1250", "1251", "1252"]
        );
        let by_id = json!({"filterGroups": [{"filters": [
            {"propertyName": "hs_object_id", "operator": "GT", "value": "1249"}
        ]}], "sorts": ["hs_object_id"]});
        assert_eq!(
            ids_of(&search(&fake, "contacts", &by_id).await["results"]),
            ["1250", "1251", "1252"]
        );
        assert_eq!(
            get(&fake, "/crm/v3/objects/contacts/1252", Some(PAT))
                .await
                .status(),
            200
        );
        assert_eq!(
            get(&fake, "/crm/v3/objects/contacts/1253", Some(PAT))
                .await
                .status(),
            404
        );
        let req = json!({"inputs": [{"id": "1251"}]});
        let resp = post_json(&fake, "/crm/v3/objects/contacts/batch/read", &req).await;
        assert_eq!(resp.status(), 200);

        // Added records can change like the others; ids keep growing.
        fake.touch("contacts", 252, T1 + 9);
        fake.archive("contacts", 250, T1 + 10);
        assert_eq!(fake.ids("contacts", true)[0], "1250");
        assert_eq!(fake.record("contacts", 252)["updatedAt"], iso(T1 + 9));
        assert_eq!(fake.record("contacts", 252)["createdAt"], iso(T1));
        assert_eq!(fake.add("contacts", 2, T1 + 20), 253..255);
        assert_eq!(fake.ids("contacts", false).len(), 254);
        assert_eq!(fake.ids("deals", false).len(), 80);
    }

    #[tokio::test]
    async fn ties_beyond_the_search_cap_drain_by_id() {
        let config = FakeConfig {
            objects: BTreeMap::from([("contacts".to_string(), ObjectSeed::new(12_500, 0))]),
            ..FakeConfig::default()
        };
        let fake = HubSpotFake::start(config).await;
        fake.touch_many("contacts", 250..12_250, T1);

        // One timestamp, BETWEEN in epoch millis, drained by id.
        let query = |last: u64| {
            json!({
                "filterGroups": [{"filters": [
                    {"propertyName": "lastmodifieddate", "operator": "BETWEEN",
                     "value": T1.to_string(), "highValue": T1.to_string()},
                    {"propertyName": "hs_object_id", "operator": "GT", "value": last.to_string()}
                ]}],
                "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                "properties": ["lastmodifieddate"],
                "limit": 200,
            })
        };
        let first = search(&fake, "contacts", &query(0)).await;
        assert_eq!(first["total"], 12_000);
        let mut capped = query(0);
        capped["after"] = json!("10000");
        let resp = post_json(&fake, "/crm/v3/objects/contacts/search", &capped).await;
        assert_eq!(resp.status(), 400);
        let mut seen: Vec<u64> = Vec::new();
        let mut last = 0;
        let mut queries = 0;
        loop {
            let v = search(&fake, "contacts", &query(last)).await;
            queries += 1;
            assert_eq!(v["total"].as_u64(), Some(12_000 - seen.len() as u64));
            let results = v["results"].as_array().expect("results");
            if results.is_empty() {
                break;
            }
            for r in results {
                assert_eq!(r["properties"]["lastmodifieddate"], iso(T1));
                last = r["id"].as_str().and_then(|s| s.parse().ok()).expect("id");
                seen.push(last);
            }
        }
        assert_eq!(queries, 61);
        assert_eq!(seen, (1250..13_250).collect::<Vec<u64>>());

        // Sorted by the timestamp, ties come by id; GTE sees them too.
        let v = search(&fake, "contacts", &since("lastmodifieddate", T1)).await;
        assert_eq!(v["total"], 12_000);
        let ids = ids_of(&v["results"]);
        assert_eq!(ids.len(), 200);
        assert_eq!(ids[0], "1250");
        assert_eq!(ids[199], "1449");

        // Touching the tie again moves every record to the new time.
        fake.touch_many("contacts", 250..12_250, T1 + 1);
        assert_eq!(search(&fake, "contacts", &query(0)).await["total"], 0);
        assert_eq!(fake.record("contacts", 12_249)["updatedAt"], iso(T1 + 1));
        assert_eq!(
            fake.record("contacts", 12_250)["updatedAt"],
            fake.record("contacts", 12_250)["properties"]["lastmodifieddate"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mutations_from_many_threads_while_serving() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let fake = fake.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        fake.touch("contacts", t * 50 + i, T1 + t as i64);
                    }
                    fake.archive("contacts", t * 50 + 40, T1);
                    fake.add("contacts", 5, T1);
                })
            })
            .collect();
        // Requests keep being served while the writers run.
        for _ in 0..5 {
            let v = search(&fake, "contacts", &since("lastmodifieddate", T1)).await;
            assert!(v["total"].as_u64().is_some_and(|n| n <= 100 + 20), "{v}");
        }
        for w in writers {
            w.join().expect("writer");
        }
        let v = search(&fake, "contacts", &since("lastmodifieddate", T1)).await;
        assert_eq!(v["total"], 100 + 20);
        assert_eq!(fake.ids("contacts", false).len(), 250 - 4 + 20);
        assert_eq!(fake.ids("contacts", true).len(), 5 + 4);
        let listed = walk(&fake, "/crm/v3/objects/contacts?limit=100").await;
        assert_eq!(ids_of(&Value::Array(listed)), fake.ids("contacts", false));
    }

    #[test]
    #[should_panic(expected = "not active")]
    fn touching_a_merged_record_panics() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let fake = rt.block_on(HubSpotFake::start(FakeConfig::default()));
        fake.merge("contacts", 1, 2, T1);
        fake.touch("contacts", 1, T1);
    }

    #[tokio::test]
    async fn invalid_mutations_panic_without_changing_anything() {
        let fake = HubSpotFake::start(FakeConfig::default()).await;
        let panics = |change: &dyn Fn()| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(change)).is_err()
        };
        assert!(panics(&|| fake.touch_many("contacts", [1, 250], T1)));
        assert!(panics(&|| fake.merge("contacts", 3, 3, T1)));
        assert!(panics(&|| fake.archive("widgets", 0, T1)));
        assert!(panics(&|| {
            fake.add("contacts", usize::MAX, T1);
        }));
        // Nothing changed, and the fake still answers.
        assert_eq!(fake.record("contacts", 1)["updatedAt"], {
            let twin = HubSpotFake::start(FakeConfig::default()).await;
            twin.record("contacts", 1)["updatedAt"].clone()
        });
        assert_eq!(fake.ids("contacts", false).len(), 250);
        let v = search(&fake, "contacts", &since("lastmodifieddate", T1)).await;
        assert_eq!(v["total"], 0);
        fake.touch("contacts", 1, T1);
        assert_eq!(
            search(&fake, "contacts", &since("lastmodifieddate", T1)).await["total"],
            1
        );
    }
}
