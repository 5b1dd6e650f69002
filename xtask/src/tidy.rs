//! `cargo xtask tidy`: mechanical checks that keep the code map and the crate layering true.
//!
//! - every `.rs` file opens with a `//!` header saying what it is;
//! - every workspace member has a heading in `ARCHITECTURE.md`, and every heading names a member;
//! - the planning crates (`slicing`, `schedule`, `memory`) depend on no tensor, device or runtime
//!   crate.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Crates that must stay pure planning code.
pub const PLANNING_CRATES: &[&str] = &["slicing", "schedule", "memory"];

/// Dependencies a planning crate must not have (prefix match on the package name).
pub const FORBIDDEN_IN_PLANNING: &[&str] = &[
    "candle",
    "cudarc",
    "seqpipe-comm",
    "seqpipe-kernels",
    "seqpipe-trainer",
    "crossbeam",
    "memmap2",
    "safetensors",
    "tokenizers",
];

/// Runs every check under `root` and returns the problems found, one line each.
pub fn check(root: &Path) -> Result<Vec<String>> {
    let members = workspace_members(root)?;
    let mut problems = Vec::new();
    for member in &members {
        problems.extend(check_headers(root, member)?);
    }
    problems.extend(check_code_map(root, &members)?);
    for member in members
        .iter()
        .filter(|m| PLANNING_CRATES.contains(&m.as_str()))
    {
        problems.extend(check_planning_dependencies(root, member)?);
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

fn check_planning_dependencies(root: &Path, member: &str) -> Result<Vec<String>> {
    let path = root.join(member).join("Cargo.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    let mut problems = Vec::new();
    // Dev-dependencies are allowed anything: tests may compare against the runtime.
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
    for table in tables {
        for (name, spec) in table {
            let package = spec.get("package").and_then(|p| p.as_str()).unwrap_or(name);
            if FORBIDDEN_IN_PLANNING.iter().any(|f| package.starts_with(f)) {
                problems.push(format!(
                    "planning crate `{member}` depends on `{package}`: planning crates see no tensors, devices, IO or runtime crates"
                ));
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_are_read_only_inside_the_code_map() {
        let md = "## Overview\n### nope\n## Code map\n### `slicing`\ntext\n### trainer (binary)\n## Other\n### x\n";
        assert_eq!(code_map_headings(md), vec!["slicing", "trainer"]);
    }
}
