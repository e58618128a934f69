//! A fake of the Mailchimp Marketing API 3.0, written from its API description.
