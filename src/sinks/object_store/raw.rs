//! The raw layer's part: records as JSON Lines, gzip-compressed as they
//! arrive, in the same line format as the files sink.

use std::io::Write;

use chrono::SecondsFormat;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::sink::Batch;
use crate::{Error, Result};

use super::NAME;

/// The metadata keys every line starts with; a record field of the same name
/// is left out (the metadata wins), as in the files sink.
pub(super) const META_KEYS: [&str; 4] = ["_tenant_id", "_sync_id", "_extracted_at", "_deleted"];

fn encode_err(e: serde_json::Error) -> Error {
    Error::sink(NAME, "cannot encode a record as JSON", e)
}

/// One part being built: a gzip stream of JSON Lines in memory.
pub(super) struct RawPart {
    gz: GzEncoder<Vec<u8>>,
    line: Vec<u8>,
    records: u64,
}

impl std::fmt::Debug for RawPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPart")
            .field("records", &self.records)
            .field("compressed", &self.gz.get_ref().len())
            .finish()
    }
}

impl RawPart {
    pub(super) fn new(level: u32) -> Self {
        RawPart {
            gz: GzEncoder::new(Vec::with_capacity(64 * 1024), Compression::new(level)),
            line: Vec::with_capacity(64 * 1024),
            records: 0,
        }
    }

    /// Records in this part so far.
    pub(super) fn records(&self) -> u64 {
        self.records
    }

    /// Appends a batch: one line per record.
    pub(super) fn push(&mut self, batch: &Batch) -> Result<()> {
        // The metadata is the same for the whole batch: encode it once.
        let mut prefix = Vec::with_capacity(160);
        prefix.extend_from_slice(b"{\"_tenant_id\":");
        serde_json::to_writer(&mut prefix, &batch.tenant).map_err(encode_err)?;
        prefix.extend_from_slice(
            format!(
                ",\"_sync_id\":\"{}\",\"_extracted_at\":\"{}\",\"_deleted\":",
                batch.sync_id,
                batch
                    .extracted_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true)
            )
            .as_bytes(),
        );
        // The whole batch goes to the compressor in one call.
        self.line.clear();
        for record in &batch.records {
            self.line.extend_from_slice(&prefix);
            self.line
                .extend_from_slice(if record.deleted { b"true" } else { b"false" });
            for (k, v) in &record.data {
                if k.starts_with('_') && META_KEYS.contains(&k.as_str()) {
                    continue;
                }
                self.line.push(b',');
                serde_json::to_writer(&mut self.line, k).map_err(encode_err)?;
                self.line.push(b':');
                serde_json::to_writer(&mut self.line, v).map_err(encode_err)?;
            }
            self.line.extend_from_slice(b"}\n");
        }
        self.gz
            .write_all(&self.line)
            .map_err(|e| Error::sink(NAME, "cannot compress records", e))?;
        if self.line.capacity() > 16 * 1024 * 1024 {
            // One huge batch should not keep its buffer for the whole sync.
            self.line = Vec::with_capacity(64 * 1024);
        }
        self.records += batch.records.len() as u64;
        Ok(())
    }

    /// The finished gzip file.
    pub(super) fn finish(self) -> Result<Vec<u8>> {
        self.gz
            .finish()
            .map_err(|e| Error::sink(NAME, "cannot compress records", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Record;
    use chrono::{TimeZone, Utc};
    use serde_json::json;
    use std::io::Read;
    use uuid::Uuid;

    #[test]
    fn lines_carry_the_metadata_first() {
        let mut part = RawPart::new(6);
        let data = json!({"id": "1", "email": "a@b.c", "_deleted": "spoof", "n": 2});
        let serde_json::Value::Object(map) = data else {
            unreachable!()
        };
        let at = Utc
            .with_ymd_and_hms(2024, 3, 1, 12, 0, 0)
            .single()
            .expect("time");
        let batch = Batch::new(
            "acme",
            "contacts",
            Uuid::nil(),
            at,
            vec![
                Record::new("1", map.clone()),
                Record::new("2", map).deleted(true),
            ],
        );
        part.push(&batch).expect("push");
        assert_eq!(part.records(), 2);
        let gz = part.finish().expect("finish");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .expect("gunzip");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with(
            "{\"_tenant_id\":\"acme\",\"_sync_id\":\"00000000-0000-0000-0000-000000000000\",\"_extracted_at\":\"2024-03-01T12:00:00.000000Z\",\"_deleted\":false,"
        ));
        let v: serde_json::Value = serde_json::from_str(lines[1]).expect("json");
        assert_eq!(v["_deleted"], json!(true));
        assert_eq!(v["email"], json!("a@b.c"));
    }
}
