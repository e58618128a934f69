//! What a run buffers between two commits.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::conn::{Conn, OpenCopy};
use super::layout::Layout;

/// Rows of one tenant's stream waiting for the next commit: COPY BINARY
/// tuples, with the last version of each key only.
#[derive(Debug)]
pub(super) struct Buffer {
    pub(super) layout: Arc<Layout>,
    pub(super) rows: Rows,
    /// Whether the next commit first tries COPY straight into the table
    /// (right when all its rows are new; see `commit_buffered`).
    pub(super) direct: bool,
    /// The COPY the rows since the last commit were streamed into, if any.
    pub(super) copy: Option<OpenCopy>,
    /// The run's streaming connection between two commits.
    pub(super) idle: Option<Conn>,
    /// False once a key repeated since the last commit (the streamed COPY
    /// holds both versions) or streaming failed: the commit then sends the
    /// buffered rows itself.
    pub(super) streamable: bool,
}

/// Encoded rows and where each one is.
#[derive(Debug, Default)]
pub(super) struct Rows {
    /// One chunk per batch.
    pub(super) chunks: Vec<Bytes>,
    /// (chunk, start, end) of each row; `None` once a later version of its
    /// key arrived.
    pub(super) at: Vec<Option<(usize, usize, usize)>>,
    /// The index in `at` of each key's latest version.
    pub(super) keys: HashMap<Vec<u8>, usize>,
    /// Rows that are not `None` in `at`.
    pub(super) live: u64,
}

/// A batch encoded by [`PostgresSink::encode`].
pub(super) struct Encoded {
    pub(super) bytes: Bytes,
    /// (start, end, key) of each row.
    pub(super) rows: Vec<(usize, usize, Vec<u8>)>,
}

impl Rows {
    /// Adds a batch; false when one of its keys was already there.
    pub(super) fn push(&mut self, batch: Encoded) -> bool {
        let chunk = self.chunks.len();
        self.chunks.push(batch.bytes);
        let mut fresh = true;
        for (start, end, key) in batch.rows {
            let idx = self.at.len();
            self.at.push(Some((chunk, start, end)));
            match self.keys.insert(key, idx) {
                Some(old) => {
                    self.at[old] = None;
                    fresh = false;
                }
                None => self.live += 1,
            }
        }
        fresh
    }

    /// `self` followed by `later` (rows of `later` win).
    pub(super) fn append(&mut self, later: Rows) {
        let base = self.chunks.len();
        let mut by_idx: Vec<(usize, Vec<u8>)> =
            later.keys.into_iter().map(|(k, i)| (i, k)).collect();
        by_idx.sort_unstable_by_key(|(i, _)| *i);
        self.chunks.extend(later.chunks);
        for (i, key) in by_idx {
            if let Some((c, s, e)) = later.at[i] {
                let idx = self.at.len();
                self.at.push(Some((base + c, s, e)));
                match self.keys.insert(key, idx) {
                    Some(old) => self.at[old] = None,
                    None => self.live += 1,
                }
            }
        }
    }

    /// The live rows as COPY data (the batches as they are when no key
    /// repeated).
    pub(super) fn payload(&self) -> Vec<Bytes> {
        if self.live as usize == self.at.len() {
            return self.chunks.clone();
        }
        let size: usize = self.at.iter().flatten().map(|(_, s, e)| e - s).sum();
        let mut out = BytesMut::with_capacity(size);
        for (c, s, e) in self.at.iter().flatten() {
            out.extend_from_slice(&self.chunks[*c][*s..*e]);
        }
        vec![out.freeze()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of one-byte rows: (row byte, key).
    fn batch(rows: &[(u8, &str)]) -> Encoded {
        Encoded {
            bytes: Bytes::from(rows.iter().map(|(b, _)| *b).collect::<Vec<u8>>()),
            rows: rows
                .iter()
                .enumerate()
                .map(|(i, (_, k))| (i, i + 1, k.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn bytes(rows: &Rows) -> Vec<u8> {
        rows.payload().iter().flat_map(|b| b.to_vec()).collect()
    }

    #[test]
    fn the_last_version_of_a_key_wins_in_order() {
        let mut r = Rows::default();
        assert!(r.push(batch(&[(1, "a"), (2, "b")])));
        assert_eq!(bytes(&r), [1, 2]);
        assert!(!r.push(batch(&[(3, "a"), (4, "c")])), "a repeated");
        assert_eq!(r.live, 3);
        assert_eq!(bytes(&r), [2, 3, 4]);
    }

    #[test]
    fn rows_restored_after_a_failed_commit_come_before_later_ones() {
        let mut failed = Rows::default();
        failed.push(batch(&[(1, "a"), (2, "b")]));
        let mut later = Rows::default();
        later.push(batch(&[(3, "b"), (4, "c")]));
        failed.append(later);
        assert_eq!(failed.live, 3);
        assert_eq!(bytes(&failed), [1, 3, 4]);
    }
}
