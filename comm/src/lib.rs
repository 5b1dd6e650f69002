//! The transport seam between pipeline ranks (skeleton).
//!
//! Will hold the `Transport` trait and its local, TCP and NCCL backends (issue #6). Nothing is
//! implemented yet.
