//! The single-writer lease of a tenant's stream: an object
//! `{prefix}/{tenant}/{stream}/_lease.json` in the raw layer, created with a
//! conditional put (`PutMode::Create`), renewed at every commit and taken
//! over once expired with `PutMode::Update` on the etag read, and deleted
//! when the run ends. A run killed with its process leaves the object
//! behind; it expires [`super::ObjectStoreSinkBuilder::lease_ttl`] after
//! its last renewal, and the next run takes it over.
//!
//! Stores without conditional updates (local disk in `object_store` 0.12)
//! renew by overwriting after checking the object is still theirs, and take
//! an expired lease over by deleting it and creating it again: exclusive
//! against a run that holds a live lease, but two runs taking over the same
//! expired lease in the same instant may both succeed there.

use std::time::Duration;

use ::object_store::path::Path;
use ::object_store::{
    Error as StoreError, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::layout::Layer;
use super::{store_err, NAME};
use crate::{Error, Result};

/// What the lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseDoc {
    /// Who holds it, in words (process id and run).
    holder: String,
    /// The run holding it.
    sync_id: Uuid,
    /// A random id of this taking of the lease (a run that takes it again
    /// after a crash is another holder).
    token: Uuid,
    /// Until when, unless renewed.
    expires_at: DateTime<Utc>,
}

/// A lease held by a run.
#[derive(Debug)]
pub(super) struct Lease {
    path: Path,
    tenant: String,
    stream: String,
    version: UpdateVersion,
    doc: LeaseDoc,
}

fn busy(tenant: &str, stream: &str, holder: String) -> Error {
    Error::Busy {
        sink: NAME,
        tenant: tenant.to_owned(),
        stream: stream.to_owned(),
        holder,
    }
}

fn expiry(ttl: Duration) -> DateTime<Utc> {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(1));
    Utc::now()
        .checked_add_signed(ttl)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn encode(doc: &LeaseDoc) -> Result<PutPayload> {
    serde_json::to_vec(doc)
        .map(PutPayload::from)
        .map_err(|e| Error::sink(NAME, "cannot encode the lease", e))
}

/// Reads the lease object: its document and version, `None` when absent.
async fn read(store: &dyn ObjectStore, path: &Path) -> Result<Option<(LeaseDoc, UpdateVersion)>> {
    let got = match store.get(path).await {
        Ok(got) => got,
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(format!("cannot read {path}"))(e)),
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got
        .bytes()
        .await
        .map_err(store_err(format!("cannot read {path}")))?;
    let doc = serde_json::from_slice(&bytes)
        .map_err(|e| Error::state(format!("unreadable lease {path}"), e))?;
    Ok(Some((doc, version)))
}

/// The version of what a put wrote.
fn written(result: ::object_store::PutResult) -> UpdateVersion {
    UpdateVersion {
        e_tag: result.e_tag,
        version: result.version,
    }
}

impl Lease {
    /// Takes the lease of a tenant's stream for `sync_id`, or fails with
    /// [`Error::Busy`] while another run holds an unexpired one.
    pub(super) async fn take(
        layer: &Layer,
        tenant: &str,
        stream: &str,
        sync_id: Uuid,
        ttl: Duration,
    ) -> Result<Lease> {
        let path = layer.stream_dir(tenant, stream).child("_lease.json");
        let store = layer.store.as_ref();
        let doc = LeaseDoc {
            holder: format!("process {} run {sync_id}", std::process::id()),
            sync_id,
            token: Uuid::new_v4(),
            expires_at: expiry(ttl),
        };
        let lease = |version| Lease {
            path: path.clone(),
            tenant: tenant.to_owned(),
            stream: stream.to_owned(),
            version,
            doc: doc.clone(),
        };
        // Two tries: the lease may expire or be released in between.
        for _ in 0..2 {
            match store
                .put_opts(&path, encode(&doc)?, PutOptions::from(PutMode::Create))
                .await
            {
                Ok(r) => return Ok(lease(written(r))),
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(store_err(format!("cannot create {path}"))(e)),
            }
            let Some((held, version)) = read(store, &path).await? else {
                continue; // released meanwhile
            };
            if held.expires_at > Utc::now() {
                return Err(busy(
                    tenant,
                    stream,
                    format!("{}, lease until {}", held.holder, held.expires_at),
                ));
            }
            tracing::warn!(
                tenant,
                stream,
                holder = %held.holder,
                expired = %held.expires_at,
                "taking over an expired lease (its run stopped without releasing it)"
            );
            match store
                .put_opts(
                    &path,
                    encode(&doc)?,
                    PutOptions::from(PutMode::Update(version)),
                )
                .await
            {
                Ok(r) => return Ok(lease(written(r))),
                Err(StoreError::Precondition { .. }) => {
                    return Err(busy(
                        tenant,
                        stream,
                        "another run took over the expired lease first".into(),
                    ))
                }
                Err(StoreError::NotImplemented) => {
                    // No conditional update: delete the expired lease and
                    // create it again.
                    match store.delete(&path).await {
                        Ok(()) | Err(StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(store_err(format!("cannot delete {path}"))(e)),
                    }
                }
                Err(e) => return Err(store_err(format!("cannot take over {path}"))(e)),
            }
        }
        Err(busy(
            tenant,
            stream,
            "the lease changed hands while it was being taken".into(),
        ))
    }

    /// Extends the lease by `ttl`; fails with [`Error::Busy`] when another
    /// run took it over (this run then stops without committing).
    pub(super) async fn renew(&mut self, store: &dyn ObjectStore, ttl: Duration) -> Result<()> {
        let mut doc = self.doc.clone();
        doc.expires_at = expiry(ttl);
        let lost = |holder: String| busy(&self.tenant, &self.stream, holder);
        let put = store
            .put_opts(
                &self.path,
                encode(&doc)?,
                PutOptions::from(PutMode::Update(self.version.clone())),
            )
            .await;
        let result = match put {
            Err(StoreError::NotImplemented) => {
                match read(store, &self.path).await? {
                    Some((held, _)) if held.token == self.doc.token => {}
                    Some((held, _)) => {
                        return Err(lost(format!("the lease was taken over by {}", held.holder)))
                    }
                    None => return Err(lost("the lease was taken over and released".into())),
                }
                store.put(&self.path, encode(&doc)?).await
            }
            other => other,
        };
        match result {
            Ok(r) => {
                self.version = written(r);
                self.doc = doc;
                Ok(())
            }
            Err(StoreError::Precondition { .. } | StoreError::NotFound { .. }) => {
                let holder = match read(store, &self.path).await {
                    Ok(Some((held, _))) => format!("the lease was taken over by {}", held.holder),
                    _ => "the lease was taken over".into(),
                };
                Err(lost(holder))
            }
            Err(e) => Err(store_err(format!("cannot renew {}", self.path))(e)),
        }
    }

    /// Deletes the lease object if it is still this run's.
    pub(super) async fn release(self, store: &dyn ObjectStore) {
        match read(store, &self.path).await {
            Ok(Some((held, _))) if held.token == self.doc.token => {
                if let Err(e) = store.delete(&self.path).await {
                    tracing::warn!(path = %self.path, error = %e, "cannot release the lease: it expires by itself");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path = %self.path, error = %e, "cannot read the lease to release it: it expires by itself")
            }
        }
    }
}
