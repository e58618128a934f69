//! Mailchimp Marketing API 3.0: a typed SDK and the source the sync engine uses.
