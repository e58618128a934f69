//! Placeholder: replaced by the constant_contact example.
fn main() {}
