//! Constant Contact v3 API: a typed SDK and the source the sync engine uses.
