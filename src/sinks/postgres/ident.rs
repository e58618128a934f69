//! Postgres identifiers: quoting, and names that fit in 63 bytes.
//!
//! Postgres cuts identifiers at 63 bytes (`NAMEDATALEN - 1`) without an error,
//! so two long property names sharing a prefix would land in one column. A
//! name that is too long, empty, holds a NUL (which no identifier can), or is
//! taken (a metadata column, another field's column) is shortened to at most
//! 54 bytes at a character boundary and given an `_` and 8 hex digits of a
//! stable hash of the whole name. The result is stored in the mapping tables,
//! so a field keeps its column forever, whatever is added later.

/// Postgres' identifier limit in bytes.
pub(crate) const MAX_IDENT: usize = 63;

/// `"name"`, with inner quotes doubled: the only quoting Postgres needs.
pub(crate) fn quote(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `"schema"."name"`.
pub(crate) fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote(schema), quote(name))
}

/// A quoted string literal (for DDL, where parameters are not allowed).
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// FNV-1a, 64 bits: stable across Rust versions and platforms, unlike
/// `std`'s hasher, so names chosen today are chosen again tomorrow.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separates parts, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// True when `name` can be used as it is.
fn fits(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_IDENT && !name.contains('\0')
}

/// The longest prefix of `s` of at most `max` bytes, cut at a character
/// boundary.
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The shortened form of `name` for attempt `salt`.
fn hashed(name: &str, salt: u32) -> String {
    let h = fnv1a(&[name.as_bytes(), &salt.to_le_bytes()]);
    let clean: String = name.chars().filter(|c| *c != '\0').collect();
    let base = prefix(&clean, MAX_IDENT - 9);
    format!("{base}_{:08x}", (h >> 32) as u32)
}

/// The identifier for `name`: `name` itself when it fits and `taken` says it
/// is free, else the shortened, hashed form (re-salted until free).
pub(crate) fn choose(name: &str, taken: impl Fn(&str) -> bool) -> String {
    if fits(name) && !taken(name) {
        return name.to_owned();
    }
    let mut salt = 0u32;
    loop {
        let candidate = hashed(name, salt);
        if !taken(&candidate) {
            return candidate;
        }
        salt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(
            quote("x\"; drop table deals; --"),
            "\"x\"\"; drop table deals; --\""
        );
        assert_eq!(qualified("s\"", "t"), "\"s\"\"\".\"t\"");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn short_free_names_are_kept() {
        let none = |_: &str| false;
        assert_eq!(choose("select", none), "select");
        assert_eq!(choose("Email", none), "Email");
        assert_eq!(
            choose("x\"; drop table deals; --", none),
            "x\"; drop table deals; --"
        );
        let n63 = "a".repeat(63);
        assert_eq!(choose(&n63, none), n63);
    }

    #[test]
    fn long_names_are_shortened_stably_and_uniquely() {
        let none = |_: &str| false;
        let a = format!("{}a", "p".repeat(199));
        let b = format!("{}b", "p".repeat(199));
        let ca = choose(&a, none);
        let cb = choose(&b, none);
        assert!(ca.len() <= MAX_IDENT && cb.len() <= MAX_IDENT);
        assert_ne!(ca, cb);
        assert_eq!(ca, choose(&a, none), "stable");
        assert!(ca.starts_with(&"p".repeat(54)));
        // Multi-byte characters are never cut in half.
        let u = "名".repeat(100);
        let cu = choose(&u, none);
        assert!(cu.len() <= MAX_IDENT);
        assert!(cu.starts_with("名名"));
    }

    #[test]
    fn empty_nul_and_taken_names_are_hashed() {
        let none = |_: &str| false;
        let e = choose("", none);
        assert!(e.starts_with('_') && e.len() == 9, "{e}");
        let z = choose("a\0b", none);
        assert!(!z.contains('\0') && z.starts_with("ab_"), "{z}");
        let taken = |s: &str| s == "_deleted";
        let d = choose("_deleted", taken);
        assert_ne!(d, "_deleted");
        assert!(d.starts_with("_deleted_"));
        // When the hashed form is taken too, another salt is tried.
        let first = choose("_deleted", taken);
        let again = choose("_deleted", |s: &str| s == "_deleted" || s == first);
        assert_ne!(again, first);
    }
}
