//! BigQuery names for tables and columns.
//!
//! Column names may hold only ASCII letters, digits and underscores, must
//! start with a letter or an underscore, are at most 300 characters long and
//! are compared without regard to case; a few prefixes are reserved. Field
//! names from providers are anything, so each is mapped to a column name:
//!
//! 1. every character other than `[A-Za-z0-9_]` becomes `_`;
//! 2. a name starting with a digit (or empty) gets a leading `_`;
//! 3. a name starting with a reserved prefix (`_TABLE_`, `_FILE_`,
//!    `_PARTITION`, …, and headwater's own `_headwater`) gets a leading `f`;
//! 4. it is cut to 300 characters;
//! 5. a name already taken (case-insensitively, including the metadata
//!    columns) gets `_` and 8 hex digits of a hash of the *original* name.
//!
//! The first field to claim a name keeps it; the mapping is stored in each
//! column's description (`field: <original name>`), so it never changes once
//! a table exists.

use std::collections::HashSet;

/// The longest column name BigQuery accepts.
pub(crate) const MAX_COLUMN: usize = 300;
/// The longest table name BigQuery accepts.
pub(crate) const MAX_TABLE: usize = 1024;

/// Prefixes BigQuery reserves for column names (compared upper-case).
const RESERVED_PREFIXES: [&str; 9] = [
    "_TABLE_",
    "_FILE_",
    "_PARTITION",
    "_ROW_TIMESTAMP",
    "__ROOT__",
    "_COLON_",
    "_CHANGE_SEQUENCE_NUMBER",
    "_CHANGE_TYPE",
    "_CHANGE_TIMESTAMP",
];

/// headwater's own prefix for helper tables and columns (compared upper-case).
const OWN_PREFIX: &str = "_HEADWATER";

/// FNV-1a, 64 bits: a hash that is the same on every platform and release.
pub(crate) fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Eight hex digits naming `s`.
fn short_hash(s: &str) -> String {
    format!("{:08x}", stable_hash(s) >> 32)
}

fn map_chars(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn truncate(s: &mut String, max: usize) {
    // ASCII only by construction, so any index is a char boundary.
    if s.len() > max {
        s.truncate(max);
    }
}

/// The column name `field` would get if nothing else claimed it.
pub(crate) fn column_base(field: &str) -> String {
    let mut base = map_chars(field);
    if base.is_empty() || base.as_bytes()[0].is_ascii_digit() {
        base.insert(0, '_');
    }
    let upper = base.to_ascii_uppercase();
    if upper.starts_with(OWN_PREFIX) || RESERVED_PREFIXES.iter().any(|p| upper.starts_with(p)) {
        base.insert(0, 'f');
    }
    truncate(&mut base, MAX_COLUMN);
    base
}

/// Column names in use in one table, compared case-insensitively.
#[derive(Debug, Default, Clone)]
pub(crate) struct ColumnNames {
    taken: HashSet<String>,
}

impl ColumnNames {
    /// Marks `name` as taken (an existing column, a metadata column).
    pub(crate) fn reserve(&mut self, name: &str) {
        self.taken.insert(name.to_ascii_lowercase());
    }

    /// True when `name` is taken.
    pub(crate) fn is_taken(&self, name: &str) -> bool {
        self.taken.contains(&name.to_ascii_lowercase())
    }

    /// A new, unique column name for `field`, reserved before it returns.
    pub(crate) fn assign(&mut self, field: &str) -> String {
        let base = column_base(field);
        if !self.is_taken(&base) {
            self.reserve(&base);
            return base;
        }
        let hash = short_hash(field);
        let mut stem = base;
        truncate(&mut stem, MAX_COLUMN - 1 - hash.len());
        let candidate = format!("{stem}_{hash}");
        if !self.is_taken(&candidate) {
            self.reserve(&candidate);
            return candidate;
        }
        // Two fields hashing alike after the same cut: count up.
        for n in 2u32.. {
            let suffix = format!("_{hash}_{n}");
            let mut stem = stem.clone();
            truncate(&mut stem, MAX_COLUMN - suffix.len());
            let candidate = format!("{stem}{suffix}");
            if !self.is_taken(&candidate) {
                self.reserve(&candidate);
                return candidate;
            }
        }
        unreachable!("u32 suffixes exhausted")
    }
}

/// The table name of a stream: the stream name when it is already a plain
/// identifier, else its characters mapped to `_` plus a hash of the original
/// (so `a-b` and `a_b` never share a table). Names starting with
/// `_headwater` are headwater's own and are also given the hash.
pub(crate) fn table_name(stream: &str) -> String {
    let mapped = map_chars(stream);
    let own = mapped.to_ascii_uppercase().starts_with(OWN_PREFIX);
    if mapped == stream && !stream.is_empty() && !own && stream.len() <= MAX_TABLE {
        return mapped;
    }
    let hash = short_hash(stream);
    let mut stem = if mapped.is_empty() {
        "_".to_owned()
    } else {
        mapped
    };
    if own {
        stem.insert(0, 's');
    }
    truncate(&mut stem, MAX_TABLE - 1 - hash.len());
    format!("{stem}_{hash}")
}

/// True for a valid dataset id: letters, digits, underscores, at most 1024.
pub(crate) fn valid_dataset(id: &str) -> bool {
    !id.is_empty() && id.len() <= 1024 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// True for a valid project id: letters, digits, `-`, and the `:` and `.` of
/// domain-scoped projects (`example.com:my-project`).
pub(crate) fn valid_project(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b':' | b'.' | b'_'))
}

/// A valid BigQuery column name (what [`ColumnNames::assign`] produces).
#[cfg(test)]
pub(crate) fn is_valid_column(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_COLUMN
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_kept() {
        let mut n = ColumnNames::default();
        assert_eq!(n.assign("email"), "email");
        assert_eq!(n.assign("select"), "select");
        assert_eq!(n.assign("hs_object_id"), "hs_object_id");
    }

    #[test]
    fn hostile_names_become_valid_and_unique() {
        let mut n = ColumnNames::default();
        for m in [
            "_tenant_id",
            "_sync_id",
            "_extracted_at",
            "_deleted",
            "_record",
        ] {
            n.reserve(m);
        }
        let names = [
            "x\"; drop table deals; --",
            "prénom",
            "名前",
            "名字",
            "",
            "2nd",
            "Email",
            "email",
            "EMAIL",
            "_tenant_id",
            "_TABLE_x",
            "_headwater_seq",
            &"a".repeat(200),
            &"b".repeat(400),
            &format!("{}x", "b".repeat(400)),
        ];
        let mut seen = HashSet::new();
        for f in names {
            let c = n.assign(f);
            assert!(is_valid_column(&c), "{f:?} -> {c:?}");
            assert!(seen.insert(c.to_ascii_lowercase()), "{f:?} -> {c:?} twice");
        }
        let mut n = ColumnNames::default();
        assert_eq!(
            n.assign("x\"; drop table deals; --"),
            "x___drop_table_deals____"
        );
        assert_eq!(n.assign("2nd"), "_2nd");
        assert_eq!(n.assign("_TABLE_x"), "f_TABLE_x");
        assert_eq!(n.assign(&"a".repeat(200)), "a".repeat(200));
        assert_eq!(n.assign(&"b".repeat(400)).len(), 300);
        assert_eq!(n.assign("Email"), "Email");
        let second = n.assign("email");
        assert!(
            second.starts_with("email_") && second.len() == 14,
            "{second}"
        );
        // Stable: the same field gets the same name in a fresh table.
        let mut again = ColumnNames::default();
        again.assign("Email");
        assert_eq!(again.assign("email"), second);
    }

    #[test]
    fn table_names() {
        assert_eq!(table_name("contacts"), "contacts");
        assert_eq!(table_name("deal_pipelines"), "deal_pipelines");
        let a = table_name("a-b");
        let b = table_name("a_b");
        assert_ne!(a, b);
        assert!(a.starts_with("a_b_"));
        assert!(table_name("_headwater_state").starts_with("s_headwater_state_"));
        assert!(table_name("").starts_with("__"));
        assert!(table_name(&"x".repeat(2000)).len() <= MAX_TABLE);
    }

    #[test]
    fn ids() {
        assert!(valid_dataset("headwater_1"));
        assert!(!valid_dataset("a-b"));
        assert!(!valid_dataset(""));
        assert!(valid_project("test-project"));
        assert!(valid_project("example.com:proj"));
        assert!(!valid_project("a`b"));
    }
}
