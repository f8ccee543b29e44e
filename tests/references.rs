//! The repository stands on its own: every reference its code and docs
//! make resolves inside it. Paths named in text (`src/...`, `docs/...`,
//! `tests/...`, ...) exist, Markdown links point at files that exist,
//! "FORMAT.md section N.M" names a section FORMAT.md has, and no file
//! points at design notes that are not part of the repository.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Directories that hold build outputs, environments or vendored code.
const SKIP: &[&str] = &[
    "target",
    ".venv",
    ".git",
    "out",
    "build",
    "node_modules",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "fuzz/target",
    "fuzz/corpus",
    "fuzz/artifacts",
];
const TEXT: &[&str] = &[
    "rs", "py", "go", "c", "h", "cpp", "hpp", "md", "toml", "txt", "sh", "in", "cfg", "json",
];

fn text_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(root()).unwrap().to_string_lossy().into_owned();
        if SKIP
            .iter()
            .any(|s| rel == *s || rel.ends_with(&format!("/{s}")) || rel.contains(".egg-info"))
        {
            continue;
        }
        if path.is_dir() {
            text_files(&path, out);
        } else if path.extension().is_some_and(|e| TEXT.iter().any(|t| e == *t))
            || path.file_name().is_some_and(|n| n == "Makefile" || n == "run")
        {
            out.push(path);
        }
    }
}

fn files() -> Vec<(String, String)> {
    let mut paths = Vec::new();
    text_files(&root(), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            Some((p.strip_prefix(root()).unwrap().to_string_lossy().into_owned(), text))
        })
        .collect()
}

/// Path-like words that start with one of the repository's top-level
/// directories: `src/format/reader.rs`, `docs/FORMAT.md`, `tests/corpus/`.
fn repository_paths(text: &str) -> Vec<String> {
    const TOP: &[&str] = &[
        "src/",
        "docs/",
        "tests/",
        "bindings/",
        "examples/",
        "benches/",
        "include/",
        ".ci/",
    ];
    let mut out = Vec::new();
    for (i, _) in text.char_indices() {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || "_-./$".contains(c)) {
            continue;
        }
        let rest = &text[i..];
        if !TOP.iter().any(|t| rest.starts_with(t)) {
            continue;
        }
        let word: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || "_-./".contains(*c))
            .collect();
        let word = word.trim_end_matches(['.', '-']).to_owned();
        let next = rest[word.len()..].chars().next();
        // Globs, templates and placeholders are not references.
        if next.is_some_and(|c| "*{<$%X".contains(c)) || word.ends_with('_') {
            continue;
        }
        out.push(word);
    }
    out
}

#[test]
fn named_repository_paths_exist() {
    let mut missing = Vec::new();
    for (file, text) in files() {
        // A path may be relative to the repository or, inside a
        // sub-project (bindings/python, bindings/cpp), to a directory above
        // the file that names it.
        let dirs: Vec<PathBuf> = root()
            .join(&file)
            .ancestors()
            .skip(1)
            .take_while(|d| d.starts_with(root()))
            .map(Path::to_path_buf)
            .collect();
        for path in repository_paths(&text) {
            if !dirs.iter().any(|d| d.join(&path).exists()) {
                missing.push(format!("{file}: {path}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "paths named in the repository that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn markdown_links_resolve() {
    let mut broken = Vec::new();
    for (file, text) in files().into_iter().filter(|(f, _)| f.ends_with(".md")) {
        let dir = root().join(&file).parent().unwrap().to_path_buf();
        for (start, _) in text.match_indices("](") {
            let target: String = text[start + 2..].chars().take_while(|c| *c != ')').collect();
            let path = target.split('#').next().unwrap_or("");
            let is_path = !path.is_empty() && !path.contains([' ', '&', ',']);
            if !is_path || path.contains("://") || path.starts_with("mailto:") {
                continue;
            }
            if !dir.join(path).exists() {
                broken.push(format!("{file}: ({target})"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "Markdown links to files that do not exist:\n{}",
        broken.join("\n")
    );
}

/// "FORMAT.md section 9.1", "FORMAT.md 3.4", "(FORMAT.md 5)".
#[test]
fn format_section_references_name_existing_sections() {
    let spec = std::fs::read_to_string(root().join("docs/FORMAT.md")).unwrap();
    let sections: Vec<String> = spec
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            l.trim_start_matches('#')
                .split_whitespace()
                .next()
                .map(|n| n.trim_end_matches('.').to_owned())
        })
        .collect();
    let mut wrong = Vec::new();
    for (file, text) in files() {
        for (start, _) in text.match_indices("FORMAT.md") {
            let rest = text[start + "FORMAT.md".len()..].trim_start_matches([' ', '\n']);
            let rest = rest
                .strip_prefix("section")
                .or_else(|| rest.strip_prefix("sections"))
                .map_or(rest, |r| r.trim_start());
            let number: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            let number = number.trim_end_matches('.');
            if !number.is_empty() && !sections.iter().any(|s| s == number) {
                wrong.push(format!("{file}: FORMAT.md {number}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "references to FORMAT.md sections that do not exist:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn nothing_points_outside_the_repository() {
    let outside = [
        ["DESIGN", ".md"].concat(),
        ["STYLE", ".md"].concat(),
        ["../", "shared"].concat(),
    ];
    let mut found = Vec::new();
    for (file, text) in files() {
        for name in &outside {
            if text.contains(name.as_str()) {
                found.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "references to texts outside the repository:\n{}",
        found.join("\n")
    );
}
