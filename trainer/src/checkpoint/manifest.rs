//! A checkpoint's `manifest.json`: every file it holds with its size and SHA-256, written last
//! and checked first, so a bit flip, a truncation, a hand edit (of `config.json`, say) or a file
//! swapped for a link to a device is found before anything is trusted.

use crate::error::{fail, Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::atomic::write_atomic;

/// The manifest's file name inside a checkpoint directory.
pub const MANIFEST: &str = "manifest.json";

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the contents.
    pub sha256: String,
}

/// Every file of a checkpoint but the manifest itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub version: u32,
    /// File name → entry.
    pub files: BTreeMap<String, FileEntry>,
}

/// Opens `path` for reading only if it is a regular file (not a directory, a FIFO or a link to a
/// device such as `/dev/zero`, which would be read forever), with its size.
fn open_regular(path: &Path) -> Result<(File, u64)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        fail!(
            Checkpoint,
            "{} is not a regular file; a checkpoint holds only regular files",
            path.display()
        );
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok((file, meta.len()))
}

/// Size and SHA-256 of a regular file, reading at most the size it had when opened.
pub fn entry_of(path: &Path) -> Result<FileEntry> {
    let (file, bytes) = open_regular(path)?;
    let mut hasher = Sha256::new();
    let mut reader = file.take(bytes);
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    if read != bytes {
        fail!(
            Checkpoint,
            "{} changed size while it was read ({bytes} bytes, then {read})",
            path.display()
        );
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(FileEntry { bytes, sha256 })
}

/// Writes the manifest of `files` (names inside `dir`), atomically.
pub fn write(dir: &Path, files: &[&str]) -> Result<()> {
    let mut entries = BTreeMap::new();
    for name in files {
        entries.insert(name.to_string(), entry_of(&dir.join(name))?);
    }
    let manifest = Manifest {
        version: 1,
        files: entries,
    };
    write_atomic(
        &dir.join(MANIFEST),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )
}

/// Reads `dir`'s manifest (bounded: a manifest is small), or `None` when there is none.
pub fn read(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    let (file, bytes) = open_regular(&path)?;
    const LIMIT: u64 = 1 << 20;
    if bytes > LIMIT {
        fail!(
            Checkpoint,
            "{} is {bytes} bytes; a manifest is at most {LIMIT}",
            path.display()
        );
    }
    let mut text = String::new();
    file.take(LIMIT)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a seqpipe manifest", path.display()))?;
    if manifest.version != 1 {
        fail!(
            Checkpoint,
            "{}: manifest version {} is not supported (expected 1)",
            path.display(),
            manifest.version
        );
    }
    Ok(Some(manifest))
}

/// Checks every file the manifest lists against its size and checksum; the first mismatch is an
/// error naming the file and what differs.
pub fn verify(dir: &Path, manifest: &Manifest) -> Result<()> {
    for (name, want) in &manifest.files {
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            fail!(
                Checkpoint,
                "{}: file name {name:?} is not a plain name",
                dir.join(MANIFEST).display()
            );
        }
        let path = dir.join(name);
        let got = entry_of(&path)?;
        if got.bytes != want.bytes {
            fail!(
                Checkpoint,
                "{} is {} bytes but the checkpoint's manifest says {}: the file was truncated, \
                 extended or replaced after it was written",
                path.display(),
                got.bytes,
                want.bytes
            );
        }
        if got.sha256 != want.sha256 {
            fail!(
                Checkpoint,
                "{}: SHA-256 {} differs from the manifest's {}: the file was damaged or edited \
                 after it was written",
                path.display(),
                got.sha256,
                want.sha256
            );
        }
    }
    Ok(())
}
