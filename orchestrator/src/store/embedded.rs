//! The embedded store: a single crash-safe redb file on local disk.
