//! Library half of `cargo xtask`, so its checks also run as ordinary `cargo test` tests.

use std::path::PathBuf;

pub mod bench;
pub mod gpu;
pub mod tidy;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}
