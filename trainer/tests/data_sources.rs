//! Token files (u16/u32, memory-mapped), text and JSONL through a Hugging Face tokenizer, and the
//! errors for files that are not what they claim to be.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::Device;
use seqpipe_trainer::config::{DataConfig, DataKind};
use seqpipe_trainer::data::DataSource;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::Tokenizer;

fn write_tokens(path: &Path, tokens: &[u32], width: usize) {
    let bytes: Vec<u8> = tokens
        .iter()
        .flat_map(|&t| {
            if width == 2 {
                (t as u16).to_le_bytes().to_vec()
            } else {
                t.to_le_bytes().to_vec()
            }
        })
        .collect();
    std::fs::write(path, bytes).unwrap();
}

fn config(kind: DataKind, path: &Path, token_bytes: usize) -> DataConfig {
    DataConfig {
        kind,
        path: Some(path.to_path_buf()),
        token_bytes,
        seq_len: 3,
        batch: 2,
        ..DataConfig::default()
    }
}

fn rows(source: &mut DataSource, m: usize) -> Vec<Vec<u32>> {
    source
        .batch(m, 2, 3, &Device::Cpu)
        .unwrap()
        .iter()
        .flat_map(|t| t.to_vec2::<u32>().unwrap())
        .collect()
}

#[test]
fn token_files_are_cut_into_consecutive_windows_and_resume_by_position() {
    let dir = tempfile::tempdir().unwrap();
    for width in [2, 4] {
        let path = dir.path().join(format!("t{width}.bin"));
        let tokens: Vec<u32> = (0..20).collect();
        write_tokens(&path, &tokens, width);
        let mut source = DataSource::open(&config(DataKind::Tokens, &path, width), 32, 0).unwrap();
        assert_eq!(
            rows(&mut source, 1),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
        );
        let position = source.position();
        let next = rows(&mut source, 1);
        assert_eq!(next, vec![vec![8, 9, 10, 11], vec![12, 13, 14, 15]]);
        source.seek(position).unwrap();
        assert_eq!(
            rows(&mut source, 1),
            next,
            "seek must replay the same windows"
        );
        // 16..20 is too short for a window of 4 + … wraps to the start.
        assert_eq!(rows(&mut source, 1)[1], vec![0, 1, 2, 3]);
    }
}

#[test]
fn bad_token_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd.bin");
    std::fs::write(&odd, [1u8, 0, 2]).unwrap();
    let e = format!(
        "{:#}",
        DataSource::open(&config(DataKind::Tokens, &odd, 2), 32, 0)
            .err()
            .unwrap()
    );
    assert!(
        e.contains("has 3 bytes of tokens, not a multiple of the token size 2 (u16)"),
        "{e}"
    );
    let big = dir.path().join("big.bin");
    write_tokens(&big, &[1, 2, 40, 3, 4, 5, 6, 7], 2);
    // Found when the file is opened, not when training reaches the token.
    let e = format!(
        "{:#}",
        DataSource::open(&config(DataKind::Tokens, &big, 2), 32, 0)
            .err()
            .unwrap()
    );
    assert!(
        e.contains("token 40 at position 2 is outside the model's vocabulary of 32"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        DataSource::open(&config(DataKind::Tokens, &big, 3), 32, 0)
            .err()
            .unwrap()
    );
    assert!(e.contains("data.token_bytes = 3"), "{e}");
}

fn tiny_tokenizer(path: &Path) {
    let words = ["<|endoftext|>", "the", "cat", "sat", "on", "mat", "[UNK]"];
    let vocab: HashMap<String, u32> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    tokenizer.save(path, false).unwrap();
}

#[test]
fn text_and_jsonl_are_tokenized_and_packed_with_end_of_text() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    tiny_tokenizer(&tok);
    let jsonl = dir.path().join("docs.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"the cat sat\"}\n{\"text\": \"on the mat\"}\n",
    )
    .unwrap();
    let cfg = DataConfig {
        tokenizer: Some(tok.clone()),
        ..config(DataKind::Text, &jsonl, 2)
    };
    let mut source = DataSource::open(&cfg, 32, 0).unwrap();
    // the cat sat <eot> | on the mat <eot>
    assert_eq!(
        rows(&mut source, 1),
        vec![vec![1, 2, 3, 0], vec![4, 1, 5, 0]]
    );
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"model\": 12").unwrap();
    let e = format!(
        "{:#}",
        DataSource::open(
            &DataConfig {
                tokenizer: Some(broken),
                ..cfg.clone()
            },
            32,
            0
        )
        .err()
        .unwrap()
    );
    assert!(e.contains("broken.json does not parse"), "{e}");
    std::fs::write(&jsonl, "{\"body\": \"the cat\"}\n").unwrap();
    let e = format!("{:#}", DataSource::open(&cfg, 32, 0).err().unwrap());
    assert!(e.contains("line 1: no string field `text`"), "{e}");
}

#[test]
fn train_runs_on_a_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corpus.bin");
    let tokens: Vec<u32> = (0..4000).map(|i| (i * 7 % 256) as u32).collect();
    write_tokens(&path, &tokens, 2);
    let out = Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args([
            "train",
            "--steps",
            "2",
            "--seq-len",
            "32",
            "--data-kind",
            "tokens",
            "--data-path",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, [0u8; 7]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args([
            "train",
            "--steps",
            "2",
            "--data-kind",
            "tokens",
            "--data-path",
            bad.to_str().unwrap(),
        ])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.starts_with("error:")
            && err.contains("not a multiple of the token size"),
        "{err}"
    );
}
