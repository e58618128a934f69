//! Placeholder: replaced by the mailchimp example.
fn main() {}
