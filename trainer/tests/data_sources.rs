//! Token files (u16/u32, memory-mapped), text and JSONL through a Hugging Face tokenizer, and the
//! errors for files that are not what they claim to be.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::Device;
use seqpipe_trainer::config::{DataConfig, DataKind};
use seqpipe_trainer::data::{DataSource, Packing};
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

#[test]
fn masked_packing_cuts_rows_after_each_end_of_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.bin");
    // Documents ending in 9: [1 2 9] [9] (empty) [3 4 5 6 9] [7 9] …
    write_tokens(&path, &[1, 2, 9, 9, 3, 4, 5, 6, 9, 7, 9, 8], 2);
    let cfg = DataConfig {
        packing: Packing::Masked,
        eos: Some(9),
        seq_len: 5,
        batch: 2,
        ..config(DataKind::Tokens, &path, 2)
    };
    let mut source = DataSource::open(&cfg, 16, 0).unwrap();
    let batch = source.draw(1, 2, 5, &Device::Cpu).unwrap();
    // Rows of 6: [1 2 9 9 3 4] and [5 6 9 7 9 8].
    let docs = &batch.documents.as_ref().unwrap()[0];
    assert_eq!(
        (docs.starts(0), docs.starts(1)),
        (&[0, 3, 4][..], &[0, 3][..])
    );
    let mask = batch.masks.as_ref().unwrap()[0].to_vec2::<f32>().unwrap();
    // A target after an EOS begins the next document and is not scored.
    assert_eq!(
        mask,
        vec![vec![1., 1., 0., 0., 1.], vec![1., 1., 0., 1., 0.]]
    );
    assert_eq!(batch.scored_targets(0..1).unwrap(), 6.0);

    let plain = DataConfig {
        path: Some(dir.path().join("plain.bin")),
        ..cfg.clone()
    };
    write_tokens(plain.path.as_ref().unwrap(), &[1, 2, 3, 4, 5, 6, 7, 8], 2);
    let e = DataSource::open(&plain, 16, 0).err().unwrap().to_string();
    assert!(
        e.contains("id 9, occurs nowhere") && e.contains("plain.bin"),
        "{e}"
    );
    let markov = DataConfig {
        kind: DataKind::Markov,
        ..cfg.clone()
    };
    let e = DataSource::open(&markov, 16, 0).err().unwrap().to_string();
    assert!(e.contains("data.kind = \"markov\" generates"), "{e}");
    let no_eos = DataConfig { eos: None, ..cfg };
    let e = DataSource::open(&no_eos, 16, 0).err().unwrap().to_string();
    assert!(e.contains("needs data.eos"), "{e}");
    let folder = DataConfig {
        path: Some(dir.path().to_path_buf()),
        ..config(DataKind::Tokens, &path, 2)
    };
    let e = DataSource::open(&folder, 16, 0).err().unwrap().to_string();
    assert!(e.contains("is a directory"), "{e}");
}

#[test]
fn masked_packing_of_text_ends_documents_with_the_tokenizers_end_of_text() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    tiny_tokenizer(&tok);
    let jsonl = dir.path().join("docs.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"the cat sat\"}\n{\"text\": \"on\"}\n").unwrap();
    let cfg = DataConfig {
        tokenizer: Some(tok),
        packing: Packing::Masked,
        seq_len: 5,
        ..config(DataKind::Text, &jsonl, 2)
    };
    let mut source = DataSource::open(&cfg, 32, 0).unwrap();
    // the cat sat <eot> on | <eot>: the inputs of one row, and its last target.
    let batch = source.draw(1, 1, 5, &Device::Cpu).unwrap();
    let docs = &batch.documents.as_ref().unwrap()[0];
    assert_eq!(docs.starts(0), &[0, 4]);
}

#[test]
fn train_packs_documents_masked_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.bin");
    let tokens: Vec<u32> = (0..4000u32)
        .map(|i| {
            if i % 37 == 36 || i % 11 == 10 {
                255
            } else {
                i * 7 % 200
            }
        })
        .collect();
    write_tokens(&path, &tokens, 2);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--steps",
            "2",
            "--seq-len",
            "32",
            "--data-kind",
            "tokens",
        ];
        args.extend(["--data-path", path.to_str().unwrap()]);
        args.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_seqpipe"))
            .args(&args)
            .output()
            .unwrap()
    };
    let out = run(&["--packing", "masked", "--eos", "255"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("documents per step (masked packing)"),
        "{stdout}"
    );
    assert!(stdout.contains("next-token accuracy"), "{stdout}");
    let out = run(&["--packing", "masked"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("needs data.eos"),
        "{stderr}"
    );
    let out = run(&["--packing", "masked", "--eos", "254"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("occurs nowhere"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("ranks failed"),
        "one message, not one per rank: {stderr}"
    );
    // Nothing but end-of-document tokens: every document is empty, and nothing is scored.
    let empty = dir.path().join("empty.bin");
    write_tokens(&empty, &[255; 400], 2);
    let out = Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args([
            "train",
            "--steps",
            "1",
            "--seq-len",
            "32",
            "--data-kind",
            "tokens",
        ])
        .args([
            "--data-path",
            empty.to_str().unwrap(),
            "--packing",
            "masked",
            "--eos",
            "255",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("score no target"),
        "{stderr}"
    );
    assert!(!stderr.contains("ranks failed"), "{stderr}");
}

#[test]
fn elastic_steps_take_whole_documents_each_token_once_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.bin");
    // Documents ending in 9, one of 12 tokens (longer than the context of 5), and a tail
    // without an EOS at the end of the file.
    let tokens: Vec<u32> = [
        &[1, 2, 9][..],
        &[9],
        &[3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 9],
        &[6, 7, 9],
        &[8, 8],
    ]
    .concat();
    write_tokens(&path, &tokens, 2);
    let cfg = DataConfig {
        packing: Packing::Masked,
        eos: Some(9),
        ..config(DataKind::Tokens, &path, 2)
    };
    let mut source = DataSource::open(&cfg, 16, 0).unwrap();
    // One epoch in steps of at least 4 tokens, documents of at most 5.
    let mut seen = Vec::new();
    while seen.iter().map(Vec::len).sum::<usize>() < tokens.len() {
        let step = source.next_documents(4, 5).unwrap();
        assert!(step.iter().map(Vec::len).sum::<usize>() >= 4);
        assert!(
            step.iter().all(|d| !d.is_empty() && d.len() <= 5),
            "{step:?}"
        );
        seen.extend(step);
    }
    // The last step ran past the epoch's end into the next one, which starts from the top.
    let all = seen.concat();
    assert_eq!(
        &all[..tokens.len()],
        &tokens[..],
        "every token once, in order"
    );
    assert_eq!(&all[tokens.len()..], &tokens[..all.len() - tokens.len()]);
    let cut: Vec<usize> = seen.iter().map(Vec::len).collect();
    assert_eq!(
        cut,
        [3, 1, 5, 5, 2, 3, 2, 3],
        "the long document is cut at the context"
    );
    let plain = DataConfig {
        kind: DataKind::Tokens,
        packing: Packing::Plain,
        eos: None,
        ..cfg
    };
    let e = DataSource::open(&plain, 16, 0)
        .unwrap()
        .next_documents(4, 5)
        .unwrap_err();
    assert!(e.to_string().contains("data.packing = \"masked\""), "{e}");
}
