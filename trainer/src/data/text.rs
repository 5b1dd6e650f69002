//! Text and JSONL corpora tokenized with a Hugging Face `tokenizer.json`.

use crate::error::{Context, Error, Result};
use std::path::Path;

use tokenizers::Tokenizer;

/// End-of-text tokens tried, in order, to separate packed documents.
pub const EOS_NAMES: &[&str] = &["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"];

/// Reads `tokenizer.json`; a file that does not parse is an error naming it.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| {
        Error::Data(format!(
            "tokenizer file {} does not parse: {e}",
            path.display()
        ))
    })
}

/// The documents of a corpus: the whole file for text, one per line's `field` for `.jsonl`.
pub fn documents(path: &Path, field: &str) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "jsonl") {
        return text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                let v: serde_json::Value = serde_json::from_str(line).with_context(|| {
                    format!("{} line {}: not valid JSON", path.display(), i + 1)
                })?;
                v.get(field)
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        Error::Data(format!(
                            "{} line {}: no string field `{field}` (set data.jsonl_field)",
                            path.display(),
                            i + 1
                        ))
                    })
            })
            .collect();
    }
    Ok(vec![text])
}

/// The tokenizer's end-of-text token, the first of [`EOS_NAMES`] it knows.
pub fn end_of_text(tokenizer: &Tokenizer) -> Option<u32> {
    EOS_NAMES
        .iter()
        .find_map(|name| tokenizer.token_to_id(name))
}

/// Tokenizes and packs documents, an end-of-text token between them when the tokenizer has one.
pub fn tokenize(tokenizer: &Tokenizer, docs: &[String]) -> Result<Vec<u32>> {
    let eos = end_of_text(tokenizer);
    let mut tokens = Vec::new();
    for doc in docs {
        let encoding = tokenizer
            .encode(doc.as_str(), false)
            .map_err(|e| Error::Data(format!("tokenizing: {e}")))?;
        tokens.extend_from_slice(encoding.get_ids());
        tokens.extend(eos);
    }
    Ok(tokens)
}
