//! The library's layers point one way (docs/architecture.md): a module may use only the modules
//! below it, and inside a module no file imports one that imports it back. Read from the sources,
//! so that a new `use` that breaks the order fails here, naming the file and the path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, lowest first. A module may use those of a lower rank only.
const RANKS: &[(&str, u32)] = &[
    ("error", 0),
    ("files", 1),
    ("formats", 2),
    ("kernels", 3),
    ("backend", 4),
    ("tokenizer", 4),
    ("sampling", 4),
    ("model", 5),
    ("load", 6),
    ("metrics", 6),
    ("decoding", 7),
    ("experiment", 8),
    ("measure", 9),
    ("report", 10),
];

fn rank(module: &str) -> u32 {
    RANKS
        .iter()
        .find(|(name, _)| *name == module)
        .unwrap_or_else(|| panic!("module `{module}` has no rank"))
        .1
}

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

/// `src/model/host/mod.rs` → `["model", "host"]`; `src/kernels/quant.rs` → `["kernels", "quant"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The `crate::a::b` paths a file names (in `use` lines and inline), outside its tests.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let path: Vec<String> = rest
            .split("::")
            .map_while(|part| {
                let name: String = part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                (name.len() == part.len() && !name.is_empty()).then_some(name)
            })
            .collect();
        let first: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        out.push(if path.is_empty() { vec![first] } else { path });
    }
    out
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files.iter().filter(|f| !f.ends_with("main.rs") && !f.ends_with("lib.rs")) {
        let own = module_path(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(&text) {
            let target = &path[0];
            // `crate::Error` and `crate::Result` are `error`'s, re-exported at the root.
            let target = if matches!(target.as_str(), "Error" | "Result") { "error" } else { target };
            if target != own[0] && rank(target) >= rank(&own[0]) {
                wrong.push(format!("{} uses crate::{}", file.display(), path.join("::")));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layer order:\n{}", wrong.join("\n"));
}

#[test]
fn no_two_files_of_a_module_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(&src, f)).collect();
    // The longest module that is a prefix of `path`: the file it names.
    let owner =
        |path: &[String]| (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p));
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &files {
        let own = module_path(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        // `super::sibling::` from a file module names the sibling file; from an inline module
        // (`mod avx2 { use super::X; }`) it names an item, which is not a file and is skipped.
        let parent = &own[..own.len() - 1];
        let siblings = super_paths(&text).into_iter().map(|path| [parent, &path[..]].concat());
        for path in crate_paths(&text).into_iter().chain(siblings) {
            if let Some(target) = owner(&path)
                && target != own
                && !own.starts_with(&target)
                && target.len() > 1
                && target[0] == own[0]
            {
                edges.entry(own.clone()).or_default().insert(target);
            }
        }
    }
    let mut circles = Vec::new();
    for (from, targets) in &edges {
        for to in targets {
            if reaches(&edges, to, from, &mut BTreeSet::new()) {
                circles.push(format!("{} ⇄ {}", from.join("::"), to.join("::")));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "files that import each other (directly or around a loop):\n{}",
        circles.join("\n")
    );
}

/// The paths a file names as `super::a::b`, outside its tests.
fn super_paths(text: &str) -> Vec<Vec<String>> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    code.match_indices("super::")
        .filter(|(at, _)| !code[..*at].ends_with("super::"))
        .map(|(at, _)| {
            code[at + "super::".len()..]
                .split("::")
                .map_while(|part| {
                    let name: String =
                        part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    (name.len() == part.len() && !name.is_empty()).then_some(name)
                })
                .collect::<Vec<_>>()
        })
        .filter(|path| !path.is_empty())
        .collect()
}

fn reaches(
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    from: &Vec<String>,
    to: &Vec<String>,
    seen: &mut BTreeSet<Vec<String>>,
) -> bool {
    if from == to || from.starts_with(to) {
        return true;
    }
    if !seen.insert(from.clone()) {
        return false;
    }
    edges.get(from).is_some_and(|next| next.iter().any(|n| reaches(edges, n, to, seen)))
}
