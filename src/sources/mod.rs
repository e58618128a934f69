//! Provider implementations.

#[cfg(feature = "hubspot")]
pub mod hubspot;

#[cfg(feature = "mailchimp")]
pub mod mailchimp;

#[cfg(feature = "constant-contact")]
pub mod constant_contact;

#[cfg(any(
    feature = "hubspot",
    feature = "mailchimp",
    feature = "constant-contact"
))]
pub(crate) mod lenient;
