//! Runs `cargo xtask tidy` as a test, and checks that tidy catches what it should.

use std::fs;

#[test]
fn workspace_is_tidy() {
    let problems = xtask::tidy::check(&xtask::workspace_root()).unwrap();
    assert!(
        problems.is_empty(),
        "tidy problems:\n{}",
        problems.join("\n")
    );
}

/// A miniature workspace with one file lacking a header, a crate missing from the code map, a
/// stray heading, a planning crate that depends on candle, and `comm` with a dependency off its
/// allow-list and one against its invariant.
#[test]
fn tidy_reports_each_kind_of_problem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(
        root.join("Cargo.toml"),
        "[workspace]\nmembers = [\"slicing\", \"comm\"]\n",
    )
    .unwrap();
    fs::write(
        root.join("ARCHITECTURE.md"),
        "## Code map\n### `slicing`\n### `ghost`\n",
    )
    .unwrap();
    for member in ["slicing", "comm"] {
        fs::create_dir_all(root.join(member).join("src")).unwrap();
    }
    fs::write(
        root.join("slicing/Cargo.toml"),
        "[package]\nname = \"x\"\n[dependencies]\ncandle-core = \"0.11\"\n",
    )
    .unwrap();
    fs::write(root.join("slicing/src/lib.rs"), "//! Fine.\n").unwrap();
    fs::write(
        root.join("comm/Cargo.toml"),
        "[package]\nname = \"y\"\n[dependencies]\ntokio = \"1\"\ncandle-nn = \"0.11\"\n",
    )
    .unwrap();
    fs::write(root.join("comm/src/lib.rs"), "\n// not a header\n").unwrap();

    let problems = xtask::tidy::check(root).unwrap().join("\n");
    assert!(
        problems.contains("comm/src/lib.rs does not start with a `//!` header"),
        "{problems}"
    );
    assert!(
        problems.contains("crate `comm` has no `### comm` heading"),
        "{problems}"
    );
    assert!(
        problems.contains("heading `ghost` that is not a workspace member"),
        "{problems}"
    );
    assert!(
        problems.contains("`slicing` depends on `candle-core`: planning crates see no tensors"),
        "{problems}"
    );
    assert!(
        problems.contains("`comm` depends on `tokio`, which is not on its allow-list"),
        "{problems}"
    );
    assert!(
        problems.contains("`comm` depends on `candle-nn`: comm moves bytes"),
        "{problems}"
    );
}
