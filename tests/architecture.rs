//! The layering lib.rs promises, read from the source: each file's `crate::` paths resolve to
//! the modules it uses; no layer uses one above it (model < backend < daemon, train), the
//! daemon never reaches candle code (`train`), and the module graph has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `a::b`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// Every `crate::a::b::...` path in the file (uses and inline paths, grouped imports opened),
/// without the comments.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path: Vec<String> = rest[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let mut bases = vec![path.clone()];
        // `crate::a::{b, c::d}`: each member extends the prefix.
        if rest[end..].starts_with('{') {
            let close = rest[end..].find('}').unwrap() + end;
            for member in rest[end + 1..close].split(',') {
                let m: Vec<String> = member
                    .trim()
                    .split("::")
                    .filter(|s| !s.is_empty() && *s != "self")
                    .map(str::to_string)
                    .collect();
                let mut full = path.clone();
                full.extend(m);
                bases.push(full);
            }
        }
        out.extend(bases);
    }
    out
}

fn layer(module: &str) -> &str {
    module.split("::").next().unwrap_or("")
}

/// The layers each layer may use (itself included).
fn allowed(from: &str) -> &'static [&'static str] {
    match from {
        "model" => &["model"],
        "backend" => &["model", "backend"],
        "daemon" => &["model", "backend", "daemon"],
        "train" => &["model", "backend", "train"],
        _ => &["model", "backend", "daemon", "train"],
    }
}

#[test]
fn no_layer_uses_one_above_it_and_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for f in &files {
        if f.starts_with(src.join("bin")) {
            continue;
        }
        let from = module_of(&src, f);
        for path in crate_paths(&std::fs::read_to_string(f).unwrap()) {
            // The longest prefix of the path that is a module (file) of the crate.
            let to = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| modules.contains(m));
            let Some(to) = to else { continue };
            if !allowed(layer(&from)).contains(&layer(&to)) {
                wrong.push(format!("{from} uses {to}"));
            }
            if to != from {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));

    // Depth-first search for a cycle in the module graph.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(1) => {
                let at = stack.iter().position(|x| x == m).unwrap();
                let mut cycle = stack[at..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for n in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(n, edges, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        if let Some(cycle) = visit(m, &edges, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_path_reader_sees_grouped_and_inline_paths() {
    let got = crate_paths(
        "use crate::a::{b, c::d};\nlet x = crate::e::f(); // crate::comment::ignored\n",
    );
    let got: Vec<String> = got.iter().map(|p| p.join("::")).collect();
    assert!(got.contains(&"a::b".to_string()), "{got:?}");
    assert!(got.contains(&"a::c::d".to_string()), "{got:?}");
    assert!(got.contains(&"e::f".to_string()), "{got:?}");
    assert!(!got.iter().any(|p| p.contains("comment")), "{got:?}");
}
