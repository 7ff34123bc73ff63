//! The shape of the code, checked: the pure core (`src/core/`) does no I/O, reads no clock,
//! draws no randomness and imports nothing from outside itself; every other layer imports
//! only from itself and the layers below it, no modules import each other in a cycle, and
//! each module map (`lib.rs`, every layer's `mod.rs`) names every module it declares.
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

/// The layers, from the bottom: the folders of `src/`, as `lib.rs`'s map lists them.
const LAYERS: &[&str] = &[
    "core", "runtime", "export", "host", "cluster", "ops", "api", "daemon", "cli",
];

/// Every `crate::LAYER::MODULE` a line names (a brace group gives each of its modules).
fn crate_paths(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let before = line[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '$') {
            continue;
        }
        let rest = &line[i + "crate::".len()..];
        let layer: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let after = &rest[layer.len()..];
        let Some(after) = after.strip_prefix("::") else {
            continue;
        };
        let modules: Vec<String> = if let Some(group) = after.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            group
                .split(',')
                .map(|item| {
                    item.trim()
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .filter(|m| !m.is_empty() && m != "self")
                .collect()
        } else {
            vec![after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()]
        };
        for m in modules {
            out.push((layer.clone(), m));
        }
    }
    out
}

/// What is wrong with the imports of `files` (paths relative to `src/`, and their text):
/// imports from a layer above, and a cycle of modules.
fn layering_faults(files: &[(PathBuf, String)]) -> Vec<String> {
    let rank = |layer: &str| LAYERS.iter().position(|l| *l == layer);
    let mut faults = Vec::new();
    // Module (layer, module) -> the modules it imports.
    let mut graph: std::collections::BTreeMap<
        (String, String),
        std::collections::BTreeSet<(String, String)>,
    > = Default::default();
    for (rel, text) in files {
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if parts.len() == 1 {
            if !["lib", "main"].contains(&parts[0].as_str()) {
                faults.push(format!(
                    "src/{} is outside every layer: put it in its layer's folder and map",
                    rel.display()
                ));
            }
            continue;
        }
        let layer = &parts[0];
        let Some(own) = rank(layer) else {
            faults.push(format!(
                "src/{layer}/ is not a layer: add it to LAYERS here and to lib.rs's map"
            ));
            continue;
        };
        let me = (layer.clone(), parts[1].clone());
        for (n, line) in text.lines().enumerate() {
            for (to_layer, to_module) in crate_paths(code(line)) {
                let Some(theirs) = rank(&to_layer) else {
                    continue; // crate::Error and the like: the crate root's re-exports
                };
                if theirs > own {
                    faults.push(format!(
                        "src/{}:{}: {layer} imports from {to_layer}, a layer above it ({})",
                        rel.display(),
                        n + 1,
                        line.trim()
                    ));
                }
                let to = (to_layer, to_module);
                if to != me && to.1 != "mod" {
                    graph.entry(me.clone()).or_default().insert(to);
                }
            }
        }
    }
    // A cycle: a module that reaches itself.
    for start in graph.keys() {
        let mut seen = std::collections::BTreeSet::new();
        let mut path: Vec<(String, String)> = Vec::new();
        let mut stack = vec![(start.clone(), 0usize)];
        while let Some((node, depth)) = stack.pop() {
            path.truncate(depth);
            path.push(node.clone());
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    let shown: Vec<String> =
                        path.iter().map(|(l, m)| format!("{l}::{m}")).collect();
                    faults.push(format!(
                        "import cycle: {} -> {}::{}",
                        shown.join(" -> "),
                        start.0,
                        start.1
                    ));
                } else if seen.insert(next.clone()) {
                    stack.push((next.clone(), depth + 1));
                }
            }
        }
        if faults.iter().any(|f| f.starts_with("import cycle")) {
            break; // one cycle is enough to show
        }
    }
    faults
}

/// Every source file under `src/`, by its path below `src/`, with its text.
fn sources() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            (f.strip_prefix(&src).unwrap().to_path_buf(), text)
        })
        .collect()
}

#[test]
fn imports_go_down_the_layers_and_never_round_in_a_cycle() {
    let files = sources();
    assert!(files.len() > 50, "read the sources: {}", files.len());
    let faults = layering_faults(&files);
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

#[test]
fn the_layering_check_finds_an_upward_import_and_a_cycle() {
    let file = |path: &str, text: &str| (PathBuf::from(path), text.to_string());
    let up = layering_faults(&[file(
        "export/layout.rs",
        "use crate::ops::service::Service;",
    )]);
    assert!(
        up.len() == 1 && up[0].contains("export imports from ops, a layer above it"),
        "{up:?}"
    );
    let cycle = layering_faults(&[
        file("cluster/store/mod.rs", "use crate::cluster::node::Nodes;"),
        file("cluster/node.rs", "use crate::host::fence::Lease;"),
        file(
            "host/fence.rs",
            "// crate::cluster::store in a comment is no import",
        ),
        file(
            "cluster/store/worker.rs",
            "let n = crate::cluster::node::x();",
        ),
        file("export/lock.rs", "use crate::core::error::Error;"),
    ]);
    assert!(cycle.is_empty(), "{cycle:?}");
    let cycle = layering_faults(&[
        file("cluster/store/mod.rs", "use crate::cluster::node::Nodes;"),
        file("cluster/node.rs", "use crate::cluster::{store, node};"),
    ]);
    assert!(
        cycle
            .iter()
            .any(|f| f.starts_with("import cycle: cluster::")),
        "{cycle:?}"
    );
    let stray = layering_faults(&[file("volume.rs", "")]);
    assert!(stray[0].contains("outside every layer"), "{stray:?}");
}

#[test]
fn the_import_scan_reads_paths_and_groups() {
    assert_eq!(
        crate_paths("use crate::export::layout::SharedLayout;"),
        [("export".to_string(), "layout".to_string())]
    );
    assert_eq!(
        crate_paths("use crate::api::{control as api, plugin};"),
        [
            ("api".to_string(), "control".to_string()),
            ("api".to_string(), "plugin".to_string())
        ]
    );
    assert_eq!(
        crate_paths("let e = crate::Error::invalid(x);"),
        [("Error".to_string(), "invalid".to_string())],
        "not a layer: the check skips it"
    );
    assert!(crate_paths("use caravan::export::layout;").is_empty());
}

#[test]
fn every_module_map_names_its_modules() {
    let mut missing = Vec::new();
    for (file, text) in sources()
        .iter()
        .filter(|(f, _)| f.ends_with("lib.rs") || f.ends_with("mod.rs"))
    {
        for m in text
            .lines()
            .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        {
            if !text.contains(&format!("[`{m}`]")) {
                missing.push(format!("{}: {m}", file.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "modules missing from their module map (the `//!` list of lib.rs or the layer's mod.rs): {missing:?}"
    );
}

/// Where each idiom lives, and what it replaces: a use of the raw call outside its one
/// home is a second way of doing the same thing.
const ONE_WAY: &[(&str, &str, &str)] = &[
    (
        "spawn_blocking",
        "runtime/deadline.rs",
        "blocking work leaves the async threads through runtime::deadline::blocking (bounded) or ::unbounded (a job's own length)",
    ),
    (
        "random/uuid",
        "runtime/random.rs",
        "random ids come from runtime::random::id, the shell's one source of chance",
    ),
];

#[test]
fn each_idiom_has_one_home() {
    let mut faults = Vec::new();
    let mut at_home = 0;
    for (file, text) in sources() {
        for (n, line) in text.lines().enumerate() {
            for (word, home, why) in ONE_WAY {
                if !names(code(line), word) {
                    continue;
                }
                if file == Path::new(home) {
                    at_home += 1;
                } else {
                    faults.push(format!("src/{}:{}: {why}", file.display(), n + 1));
                }
            }
        }
    }
    // The scan sees the idiom where it lives (else it would pass by seeing nothing).
    assert!(
        at_home >= ONE_WAY.len(),
        "the scan found no idiom at its home"
    );
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}
