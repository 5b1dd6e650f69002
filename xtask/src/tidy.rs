//! `cargo xtask tidy`: mechanical checks that keep the code map and the crate layering true.
//!
//! - every `.rs` file opens with a `//!` header saying what it is;
//! - every workspace member has a heading in `ARCHITECTURE.md`, and every heading names a member;
//! - each library crate depends only on what its allow-list names ([`ALLOWED_DEPENDENCIES`]): the
//!   planning crates (`slicing`, `schedule`, `memory`) on no tensor, device, IO or runtime crate,
//!   `comm` on no candle (it moves bytes, not tensors), `kernels` on no schedule (ops do not know
//!   when they run). A new dependency is a decision: add it to the list in the same change.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The (non-dev) dependencies each library crate may have, by package name. Dev-dependencies are
/// free: tests may compare against anything.
pub const ALLOWED_DEPENDENCIES: &[(&str, &[&str])] = &[
    (
        "slicing",
        &[
            "rand",
            "rand_chacha",
            "rand_distr",
            "serde",
            "serde_json",
            "thiserror",
        ],
    ),
    (
        "schedule",
        &["seqpipe-slicing", "serde", "serde_json", "thiserror"],
    ),
    (
        "memory",
        &[
            "good_lp",
            "plotters",
            "seqpipe-schedule",
            "seqpipe-slicing",
            "serde",
            "serde_json",
            "thiserror",
        ],
    ),
    (
        "comm",
        &[
            "bytemuck",
            "crossbeam-channel",
            "cudarc",
            "half",
            "thiserror",
        ],
    ),
    (
        "kernels",
        &["candle-core", "gemm", "half", "pulp", "thiserror"],
    ),
];

/// Dependencies that would break a crate's invariant, whatever its list says: the reason given
/// when one appears (prefix match on the package name).
pub const NEVER: &[(&str, &str, &str)] = &[
    ("slicing", "candle", "planning crates see no tensors"),
    ("schedule", "candle", "planning crates see no tensors"),
    ("memory", "candle", "planning crates see no tensors"),
    ("comm", "candle", "comm moves bytes, not candle tensors"),
    (
        "kernels",
        "seqpipe-schedule",
        "kernels do not know schedules",
    ),
];

/// Runs every check under `root` and returns the problems found, one line each.
pub fn check(root: &Path) -> Result<Vec<String>> {
    let members = workspace_members(root)?;
    let mut problems = Vec::new();
    for member in &members {
        problems.extend(check_headers(root, member)?);
    }
    problems.extend(check_code_map(root, &members)?);
    for (member, allowed) in ALLOWED_DEPENDENCIES {
        if members.iter().any(|m| m == member) {
            problems.extend(check_dependencies(root, member, allowed)?);
        }
    }
    Ok(problems)
}

/// Workspace member directories, as listed in the root `Cargo.toml`.
pub fn workspace_members(root: &Path) -> Result<Vec<String>> {
    let text =
        fs::read_to_string(root.join("Cargo.toml")).context("reading the root Cargo.toml")?;
    let doc: toml::Table = text.parse().context("parsing the root Cargo.toml")?;
    let members = doc
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .context("root Cargo.toml has no [workspace] members")?;
    Ok(members
        .iter()
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn check_headers(root: &Path, member: &str) -> Result<Vec<String>> {
    let mut files = Vec::new();
    rust_files(&root.join(member), &mut files)?;
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            let rel = file.strip_prefix(root).unwrap_or(&file);
            problems.push(format!(
                "{} does not start with a `//!` header saying what it is",
                rel.display()
            ));
        }
    }
    Ok(problems)
}

/// Crate names used as `## ` or `### ` headings of the code map (the first word, backticks removed).
fn code_map_headings(architecture: &str) -> Vec<String> {
    let mut in_map = false;
    let mut headings = Vec::new();
    for line in architecture.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            in_map = title.trim().eq_ignore_ascii_case("code map");
            continue;
        }
        if let (true, Some(title)) = (in_map, line.strip_prefix("### ")) {
            let word = title
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches('`');
            headings.push(word.to_string());
        }
    }
    headings
}

fn check_code_map(root: &Path, members: &[String]) -> Result<Vec<String>> {
    let path = root.join("ARCHITECTURE.md");
    let text = fs::read_to_string(&path).context("reading ARCHITECTURE.md")?;
    let headings = code_map_headings(&text);
    let mut problems = Vec::new();
    for member in members {
        if !headings.contains(member) {
            problems.push(format!(
                "crate `{member}` has no `### {member}` heading in ARCHITECTURE.md's code map"
            ));
        }
    }
    for heading in &headings {
        if !members.contains(heading) {
            problems.push(format!("ARCHITECTURE.md's code map has a heading `{heading}` that is not a workspace member"));
        }
    }
    Ok(problems)
}

/// The package names of a manifest's normal dependencies (all targets).
fn dependencies(doc: &toml::Table) -> Vec<String> {
    let mut tables: Vec<&toml::Table> = doc
        .get("dependencies")
        .and_then(|d| d.as_table())
        .into_iter()
        .collect();
    if let Some(targets) = doc.get("target").and_then(|t| t.as_table()) {
        for target in targets.values() {
            tables.extend(target.get("dependencies").and_then(|d| d.as_table()));
        }
    }
    tables
        .into_iter()
        .flat_map(|table| table.iter())
        .map(|(name, spec)| {
            let package = spec.get("package").and_then(|p| p.as_str());
            package.unwrap_or(name).to_string()
        })
        .collect()
}

/// Problems with `deps` of `member` against its allow-list and the invariants.
pub fn dependency_problems(member: &str, allowed: &[&str], deps: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for package in deps {
        let never = NEVER
            .iter()
            .find(|(m, prefix, _)| *m == member && package.starts_with(prefix));
        if let Some((_, _, why)) = never {
            problems.push(format!("`{member}` depends on `{package}`: {why}"));
        } else if !allowed.contains(&package.as_str()) {
            problems.push(format!(
                "`{member}` depends on `{package}`, which is not on its allow-list \
                 (xtask/src/tidy.rs ALLOWED_DEPENDENCIES): add it there if it belongs"
            ));
        }
    }
    problems
}

fn check_dependencies(root: &Path, member: &str, allowed: &[&str]) -> Result<Vec<String>> {
    let path = root.join(member).join("Cargo.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    Ok(dependency_problems(member, allowed, &dependencies(&doc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_are_read_only_inside_the_code_map() {
        let md = "## Overview\n### nope\n## Code map\n### `slicing`\ntext\n### trainer (binary)\n## Other\n### x\n";
        assert_eq!(code_map_headings(md), vec!["slicing", "trainer"]);
    }

    #[test]
    fn dependencies_off_the_list_or_against_an_invariant_are_named() {
        let deps = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(dependency_problems("schedule", &["serde"], &deps(&["serde"])).is_empty());
        let p = dependency_problems("schedule", &["serde"], &deps(&["tokio"]));
        assert!(
            p[0].contains("`tokio`") && p[0].contains("allow-list"),
            "{p:?}"
        );
        // An invariant holds even against a list that would allow the crate.
        let p = dependency_problems("comm", &["candle-core"], &deps(&["candle-core"]));
        assert!(p[0].contains("bytes, not candle tensors"), "{p:?}");
        let p = dependency_problems("kernels", &[], &deps(&["seqpipe-schedule"]));
        assert!(p[0].contains("do not know schedules"), "{p:?}");
        // The real manifests pass.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for (member, allowed) in ALLOWED_DEPENDENCIES {
            assert!(
                check_dependencies(root, member, allowed)
                    .unwrap()
                    .is_empty(),
                "{member}"
            );
        }
    }
}
