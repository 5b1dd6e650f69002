//! Fixed-length training sequences cut from a token stream: a memory-mapped token file
//! (nanoGPT / llm.c `.bin`: little-endian u16 or u32) or an in-memory buffer of tokenized text.
//!
//! Documents are packed back to back (text sources put an end-of-text token between them) and
//! split wherever a sequence ends, so no token is padding. Sequences are consecutive windows of
//! `seq_len + 1` tokens (inputs and shifted targets); at the end the stream wraps to the start. The
//! position is the offset of the next window, which is what a checkpoint saves.

use crate::error::{fail, Context, Result};
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

/// Where the tokens live.
enum Tokens {
    /// A memory-mapped file of `width`-byte little-endian tokens from byte `offset` on.
    File {
        map: Mmap,
        width: usize,
        offset: usize,
    },
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
    /// Maps a token file of `width` (2 or 4) bytes per token; every token must be below `vocab`
    /// (checked here, over the whole file, not when training reaches it). An llm.c file (its
    /// 1024-byte header) is recognised and its header checked; a u32 file opened as u16 is
    /// recognised by its zero high halves.
    pub fn open_file(path: &Path, width: usize, vocab: usize) -> Result<Self> {
        if width != 2 && width != 4 {
            fail!(
                Data,
                "data.token_bytes = {width}: token files hold u16 (2) or u32 (4) tokens"
            );
        }
        if path.is_dir() {
            fail!(
                Data,
                "data.path = {} is a directory; give a token file (u16 or u32 tokens)",
                path.display()
            );
        }
        let file =
            File::open(path).with_context(|| format!("opening token file {}", path.display()))?;
        let map = map_read_only(&file).with_context(|| format!("mapping {}", path.display()))?;
        let name = path.display().to_string();
        let offset = llmc_header(&map, width, &name)?;
        let body = map.len() - offset;
        if body % width != 0 {
            fail!(Data,
                "token file {name} has {body} bytes of tokens, not a multiple of the token size {width} ({}); is data.token_bytes right?",
                if width == 2 { "u16" } else { "u32" }
            );
        }
        let stream = TokenStream {
            tokens: Tokens::File { map, width, offset },
            len: body / width,
            vocab,
            position: 0,
            name,
        };
        stream.check_width(width)?;
        stream.check_vocabulary()?;
        Ok(stream)
    }

    /// u32 tokens read as u16 show as every second u16 being zero (the high halves): refuse that
    /// rather than train on interleaved zeros.
    fn check_width(&self, width: usize) -> Result<()> {
        let sample = self.len.min(1 << 16) & !1;
        if width != 2 || sample < 64 {
            return Ok(());
        }
        let odd_zero = (1..sample).step_by(2).all(|i| self.token(i) == 0);
        let even_nonzero = (0..sample).step_by(2).any(|i| self.token(i) != 0);
        if odd_zero && even_nonzero {
            fail!(
                Data,
                "token file {}: every second u16 of its first {sample} is zero, as in a file of \
                 u32 tokens read as u16; set data.token_bytes = 4",
                self.name
            );
        }
        Ok(())
    }

    /// The first token at or above the vocabulary, over the whole stream.
    fn check_vocabulary(&self) -> Result<()> {
        if let Some((i, t)) = (0..self.len)
            .map(|i| (i, self.token(i)))
            .find(|&(_, t)| t as usize >= self.vocab)
        {
            fail!(
                Data,
                "{}: token {t} at position {i} is outside the model's vocabulary of {} (raise \
                 model.vocab, or check data.token_bytes)",
                self.name,
                self.vocab
            );
        }
        Ok(())
    }

    /// A stream over tokens already in memory.
    pub fn from_tokens(tokens: Vec<u32>, vocab: usize, name: String) -> Result<Self> {
        if let Some((i, t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= vocab)
        {
            fail!(
                Data,
                "{name}: token {t} at position {i} is outside the model's vocabulary of {vocab}"
            );
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
            Tokens::File {
                map,
                width: 2,
                offset,
            } => {
                let b = offset + 2 * i;
                u32::from(u16::from_le_bytes([map[b], map[b + 1]]))
            }
            Tokens::File { map, offset, .. } => {
                let b = offset + 4 * i;
                u32::from_le_bytes([map[b], map[b + 1], map[b + 2], map[b + 3]])
            }
        }
    }

    /// An error unless `token` (`what`) occurs somewhere in the stream.
    pub fn check_has(&self, token: u32, what: &str) -> Result<()> {
        if (0..self.len).any(|i| self.token(i) == token) {
            return Ok(());
        }
        fail!(
            Data,
            "{}: {what}, id {token}, occurs nowhere in its {} tokens; masked packing would train the whole \
             stream as one document: set data.eos to the id that ends its documents, or use \
             data.packing = \"plain\"",
            self.name,
            self.len
        )
    }

    /// The next window of `n` tokens.
    pub fn next_window(&mut self, n: usize) -> Result<Vec<u32>> {
        if n > self.len {
            fail!(
                Data,
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
            fail!(
                Data,
                "{}: token {t} at position {} is outside the model's vocabulary of {}",
                self.name,
                start + i,
                self.vocab
            );
        }
        self.position += n;
        Ok(window)
    }

    /// The next document: the tokens from the position through the next `eos` (included), at
    /// most `max_len` of them (the rest of a longer document is the next one), or to the end of
    /// the stream, after which it starts again from its beginning.
    pub fn next_document(&mut self, eos: u32, max_len: usize) -> Vec<u32> {
        if self.position >= self.len {
            self.position = 0;
        }
        let mut doc = Vec::new();
        while doc.len() < max_len && self.position < self.len {
            let t = self.token(self.position);
            self.position += 1;
            doc.push(t);
            if t == eos {
                break;
            }
        }
        doc
    }

    /// Offset of the next window.
    pub fn position(&self) -> u128 {
        self.position as u128
    }

    /// Moves to an offset from [`TokenStream::position`]; one past the end of the tokens is an
    /// error (it cannot come from this file).
    pub fn seek(&mut self, position: u128) -> Result<()> {
        match usize::try_from(position) {
            Ok(p) if p <= self.len => {
                self.position = p;
                Ok(())
            }
            _ => fail!(
                Data,
                "data position {position} is past the end of the token data ({} tokens): the \
                 checkpoint belongs to other data or is corrupt",
                self.len
            ),
        }
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

/// llm.c's token files start with a 1024-byte header of 256 little-endian i32: magic 20240520,
/// version 1 (u16 tokens), then the token count.
const LLMC_MAGIC: i32 = 20240520;
const LLMC_HEADER: usize = 1024;

/// Bytes to skip: the llm.c header's size when the file has one (checked), else 0.
fn llmc_header(map: &[u8], width: usize, name: &str) -> Result<usize> {
    let word =
        |k: usize| i32::from_le_bytes([map[4 * k], map[4 * k + 1], map[4 * k + 2], map[4 * k + 3]]);
    if map.len() < LLMC_HEADER || word(0) != LLMC_MAGIC {
        return Ok(0);
    }
    let (version, count) = (word(1), word(2));
    if version != 1 {
        fail!(
            Data,
            "{name}: llm.c token file version {version}; only version 1 (u16 tokens) is known"
        );
    }
    if width != 2 {
        fail!(
            Data,
            "{name} is an llm.c token file of u16 tokens; set data.token_bytes = 2"
        );
    }
    let body = map.len() - LLMC_HEADER;
    if count < 0 || count as usize * 2 != body {
        fail!(
            Data,
            "{name}: the llm.c header says {count} tokens but {body} bytes ({} tokens) follow it: \
             the file is truncated or damaged",
            body / 2
        );
    }
    Ok(LLMC_HEADER)
}
