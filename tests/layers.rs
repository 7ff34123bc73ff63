//! The shape of the code, checked: the pure core (`src/core/`) does no I/O, reads no clock,
//! draws no randomness and imports nothing from outside itself; `lib.rs`'s module map names
//! every module.
//!
//! A source scan, not a type check: it reads the code without its comments and looks for
//! the paths through which a module reaches the world. The compiler cannot enforce purity
//! within one crate; this test fails on the first such path anyone adds to the core, and
//! names the file, line and rule.

use std::path::{Path, PathBuf};

/// What the core may not name, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("std::fs", "the filesystem belongs to the shell"),
    ("std::net", "the network belongs to the shell"),
    ("std::process", "processes belong to the shell"),
    ("std::thread", "threads and sleeping belong to the shell"),
    (
        "std::env",
        "the environment is configuration, read by the shell",
    ),
    ("std::io", "I/O belongs to the shell"),
    (
        "Instant",
        "time comes in as core::time::Moment, read by the shell",
    ),
    (
        "SystemTime::now",
        "wall-clock time comes in as an argument (formatting a given time is fine)",
    ),
    (
        "OnceLock",
        "no global state: the core is functions of their arguments",
    ),
    ("thread_local", "no global state"),
    ("static mut", "no global state"),
    ("tokio", "no runtime: the shell awaits"),
    ("nix::", "system calls belong to the shell"),
    ("libc", "system calls belong to the shell"),
    ("sled", "the store's files belong to the shell"),
    ("warp", "HTTP belongs to the shell"),
    (
        "tracing",
        "logging is an effect: return what happened, the shell logs it",
    ),
    ("rand", "randomness comes in as an argument"),
    ("unsafe", "nothing here needs it"),
    ("extern crate", "the core's dependencies are std and serde"),
];

/// Names inside a forbidden path that the core may still use: the types that describe an
/// I/O failure (an error is a value the shell hands in; doing I/O is what is forbidden).
const ALLOWED: &[&str] = &["std::io::Error", "std::io::ErrorKind", "std::io::Result"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line: without its `//` comment (a `//` inside a string literal is rare
/// enough in the core that a false alarm there is acceptable: reword the string).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Whether `word` occurs in `line` as a whole identifier path (not inside a longer name).
fn names(line: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        let glued_before = before.is_some_and(ident);
        let glued_after = word.chars().last().is_some_and(ident) && after.is_some_and(ident);
        !glued_before && !glued_after
    })
}

#[test]
fn the_core_reaches_for_nothing_outside_itself() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    assert!(
        files.len() >= 2,
        "src/core holds the pure core; found {files:?}"
    );
    let mut faults = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
        for (n, line) in text.lines().enumerate() {
            let mut line = code(line).to_string();
            for allowed in ALLOWED {
                // Only the whole name: `std::io::ErrorKind` is allowed, `std::io::Errors` not.
                while let Some(i) = line.match_indices(allowed).map(|(i, _)| i).find(|&i| {
                    !line[i + allowed.len()..]
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                }) {
                    line.replace_range(i..i + allowed.len(), "IoFailure");
                }
            }
            let line = line.as_str();
            for (word, why) in FORBIDDEN {
                if names(line, word) {
                    faults.push(format!(
                        "{}:{}: names `{word}`: {why}",
                        shown.display(),
                        n + 1
                    ));
                }
            }
            // Imports stay inside the core: `crate::core::…` or relative ones.
            for (i, _) in line.match_indices("crate::") {
                if !line[i..].starts_with("crate::core::") && !line[i..].starts_with("crate::core;")
                {
                    faults.push(format!(
                        "{}:{}: imports from outside the core ({}): the core must not depend on the shell",
                        shown.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        faults.is_empty(),
        "the core is not pure:\n{}",
        faults.join("\n")
    );
}

#[test]
fn the_scan_finds_what_it_looks_for() {
    // Not vacuous: the rules catch the paths they name, and spare longer names.
    assert!(names(code("let t = std::time::Instant::now();"), "Instant"));
    assert!(names(code("use std::fs::File;"), "std::fs"));
    assert!(!names(
        code("let x = 1; // Instant::now() is read by the shell"),
        "Instant"
    ));
    assert!(!names(code("fn operand(x: u8) {}"), "rand"));
    assert!(!names(code("let instants = 3;"), "Instant"));
}

#[test]
fn lib_rs_maps_every_module() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let missing: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .filter(|m| !lib.contains(&format!("[`{m}`]")))
        .collect();
    assert!(
        missing.is_empty(),
        "modules missing from lib.rs's module map: {missing:?}"
    );
}
