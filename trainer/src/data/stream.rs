//! Fixed-length training sequences cut from a token stream: a memory-mapped token file
//! (nanoGPT / llm.c `.bin`: little-endian u16 or u32) or an in-memory buffer of tokenized text.
//!
//! Documents are packed back to back (text sources put an end-of-text token between them) and
//! split wherever a sequence ends, so no token is padding. Sequences are consecutive windows of
//! `seq_len + 1` tokens (inputs and shifted targets); at the end the stream wraps to the start. The
//! position is the offset of the next window, which is what a checkpoint saves.

use std::fs::File;
use std::path::Path;

use anyhow::{bail, Context};
use memmap2::Mmap;

/// Where the tokens live.
enum Tokens {
    /// A memory-mapped file of `width`-byte little-endian tokens.
    File { map: Mmap, width: usize },
    /// Tokens in memory.
    Memory(Vec<u32>),
}

/// A token stream with a position.
pub struct TokenStream {
    tokens: Tokens,
    len: usize,
    vocab: usize,
    position: usize,
    name: String,
}

impl TokenStream {
    /// Maps a token file of `width` (2 or 4) bytes per token; every token must be below `vocab`.
    pub fn open_file(path: &Path, width: usize, vocab: usize) -> anyhow::Result<Self> {
        if width != 2 && width != 4 {
            bail!("data.token_bytes = {width}: token files hold u16 (2) or u32 (4) tokens");
        }
        let file =
            File::open(path).with_context(|| format!("opening token file {}", path.display()))?;
        let map = map_read_only(&file).with_context(|| format!("mapping {}", path.display()))?;
        if map.len() % width != 0 {
            bail!(
                "token file {} has {} bytes, not a multiple of the token size {width} ({}); is data.token_bytes right?",
                path.display(),
                map.len(),
                if width == 2 { "u16" } else { "u32" }
            );
        }
        let len = map.len() / width;
        Ok(TokenStream {
            tokens: Tokens::File { map, width },
            len,
            vocab,
            position: 0,
            name: path.display().to_string(),
        })
    }

    /// A stream over tokens already in memory.
    pub fn from_tokens(tokens: Vec<u32>, vocab: usize, name: String) -> anyhow::Result<Self> {
        if let Some((i, t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= vocab)
        {
            bail!("{name}: token {t} at position {i} is outside the model's vocabulary of {vocab}");
        }
        let len = tokens.len();
        Ok(TokenStream {
            tokens: Tokens::Memory(tokens),
            len,
            vocab,
            position: 0,
            name,
        })
    }

    /// Tokens in the stream.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the stream is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn token(&self, i: usize) -> u32 {
        match &self.tokens {
            Tokens::Memory(v) => v[i],
            Tokens::File { map, width: 2 } => {
                u32::from(u16::from_le_bytes([map[2 * i], map[2 * i + 1]]))
            }
            Tokens::File { map, .. } => {
                u32::from_le_bytes([map[4 * i], map[4 * i + 1], map[4 * i + 2], map[4 * i + 3]])
            }
        }
    }

    /// The next window of `n` tokens.
    pub fn next_window(&mut self, n: usize) -> anyhow::Result<Vec<u32>> {
        if n > self.len {
            bail!(
                "{} holds {} tokens, fewer than one sequence of {n} (data.seq_len + 1)",
                self.name,
                self.len
            );
        }
        if self.position + n > self.len {
            self.position = 0;
        }
        let start = self.position;
        let window: Vec<u32> = (start..start + n).map(|i| self.token(i)).collect();
        if let Some((i, t)) = window
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.vocab)
        {
            bail!(
                "{}: token {t} at position {} is outside the model's vocabulary of {}",
                self.name,
                start + i,
                self.vocab
            );
        }
        self.position += n;
        Ok(window)
    }

    /// Offset of the next window.
    pub fn position(&self) -> u128 {
        self.position as u128
    }

    /// Moves to an offset from [`TokenStream::position`].
    pub fn seek(&mut self, position: u128) {
        self.position = usize::try_from(position).unwrap_or(0).min(self.len);
    }
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map_read_only(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is only read, through `&[u8]` bounds-checked indexing. The one hazard is
    // another process truncating or rewriting the file while it is mapped (truncation raises
    // SIGBUS); training data files are written once before training and only read afterwards,
    // which is the same contract nanoGPT's and llm.c's `np.memmap` readers rely on.
    unsafe { Mmap::map(file) }
}
