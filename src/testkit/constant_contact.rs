//! A fake of the Constant Contact v3 API, written from its API description.
