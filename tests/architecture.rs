//! The layering lib.rs and docs/architecture.md promise, read from the source: each file's
//! `crate::` and `super::` paths resolve to the modules it uses; no layer uses one above it
//! (model < backend < daemon, train), the daemon never reaches candle code (`train`), and the
//! module graph has no cycle. Inside `src/daemon/`: each folder (and entry point) imports only
//! the folders its rule lists, the folders form no cycle, no file imports from a module above
//! its own folder, daemon/mod.rs only lists modules, and no function on the serving path
//! (daemon/, backend/) is over 80 lines. The checks run on the real tree, and on a copy of it
//! with a fault injected, to show they catch one.

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
    prefixed_paths(text, "crate::")
}

/// Every path in the file that starts with `prefix` (grouped imports opened), without it.
fn prefixed_paths(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find(prefix) {
        // `crate::` inside a longer name (`$crate::`, `my_crate::`) is not the crate root.
        let before = &code[..code.len() - rest.len() + i];
        let part_of_name = before
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':');
        rest = &rest[i + prefix.len()..];
        if part_of_name {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path: Vec<String> = rest[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let mut bases = Vec::new();
        // `crate::a::{b, c::d}`: each member extends the prefix (the prefix alone is no use).
        if !rest[end..].starts_with('{') {
            bases.push(path.clone());
        } else {
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

/// Inside the daemon: the folders (and the files beside them) each one may import, besides
/// itself. Shared vocabulary at the bottom (config, ack, supervise), then the stages, the
/// doors, and the entry points, which wire everything and import no other entry point.
fn daemon_rule(unit: &str) -> Option<&'static [&'static str]> {
    const ENTRY: &[&str] = &[
        "ack",
        "admin",
        "api",
        "config",
        "http_listener",
        "kafka",
        "pipeline",
        "schemas",
        "start",
        "supervise",
        "swap",
        "telemetry",
    ];
    Some(match unit {
        "config" | "ack" | "supervise" => &[],
        "telemetry" => &["config"],
        "pipeline" => &["ack", "config", "supervise"],
        "swap" => &["config", "pipeline"],
        "schemas" => &["config", "pipeline", "supervise"],
        "kafka" => &["ack", "config", "pipeline", "schemas", "supervise", "swap"],
        "api" => &["ack", "config", "kafka", "pipeline"],
        "http_listener" => &["api", "config"],
        "admin" => &["api", "config", "http_listener", "swap"],
        "start" => &["api", "config", "kafka", "pipeline", "schemas", "swap"],
        "run" | "serve" | "stdin" => ENTRY,
        _ => return None,
    })
}

/// `daemon::pipeline::workers` → `pipeline`; `daemon` itself → `None`.
fn daemon_unit(module: &str) -> Option<&str> {
    let mut parts = module.split("::");
    (parts.next() == Some("daemon"))
        .then(|| parts.next())
        .flatten()
}

/// The module a file's `super::...` path starts from: the parent of the file's module.
fn resolve_super(from: &str, path: &[String]) -> Vec<String> {
    let mut base: Vec<String> = from.split("::").map(str::to_string).collect();
    let mut rest = path;
    // `super::x` is read as ["super", "x"]; each further `super` goes one more level up.
    base.pop();
    while rest.first().is_some_and(|p| p == "super") {
        rest = &rest[1..];
        base.pop();
    }
    base.extend(rest.iter().cloned());
    base
}

/// The module graph of the tree at `src`: each module's file and the modules it imports.
struct Tree {
    files: BTreeMap<String, PathBuf>,
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl Tree {
    fn read(src: &Path) -> Tree {
        let mut list = Vec::new();
        rust_files(src, &mut list);
        let files: BTreeMap<String, PathBuf> = list
            .iter()
            .filter(|f| !f.starts_with(src.join("bin")))
            .map(|f| (module_of(src, f), f.clone()))
            .collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, f) in &files {
            let text = std::fs::read_to_string(f).unwrap();
            let mut paths = crate_paths(&text);
            // `super::` inside an inline module (`mod tests { use super::*; }`) is the file's
            // own module: only the file's top level is read for it.
            let top: String = text
                .lines()
                .take_while(|l| !(l.starts_with("mod ") && l.trim_end().ends_with('{')))
                .collect::<Vec<_>>()
                .join("\n");
            for p in prefixed_paths(&top, "super::") {
                let mut full = vec!["super".to_string()];
                full.extend(p);
                paths.push(resolve_super(from, &full[1..]));
            }
            for path in paths {
                // The longest prefix of the path that is a module (file) of the crate.
                let to = (1..=path.len())
                    .rev()
                    .map(|n| path[..n].join("::"))
                    .find(|m| files.contains_key(m));
                if let Some(to) = to.filter(|to| to != from) {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
        Tree { files, edges }
    }

    fn imports(&self) -> impl Iterator<Item = (&String, &String)> {
        self.edges
            .iter()
            .flat_map(|(from, tos)| tos.iter().map(move |to| (from, to)))
    }
}

/// A cycle in a graph, if there is one (depth-first search).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
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
    edges
        .keys()
        .find_map(|m| visit(m, edges, &mut state, &mut Vec::new()))
}

/// Layering and module cycles across the whole crate.
fn layering_problems(tree: &Tree) -> Vec<String> {
    let mut wrong: Vec<String> = tree
        .imports()
        .filter(|(from, to)| !allowed(layer(from)).contains(&layer(to)))
        .map(|(from, to)| format!("{from} uses {to}"))
        .collect();
    if let Some(cycle) = find_cycle(&tree.edges) {
        wrong.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    wrong
}

/// The daemon's folder rules, folder cycles, upward imports and its mod.rs.
fn daemon_problems(tree: &Tree) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in tree.imports() {
        // Upward: a module above the file's own folder (its folder's root, the mod.rs
        // beside it, is its own folder).
        let own_folder = if tree.files[from].ends_with("mod.rs") {
            from.as_str()
        } else {
            from.rsplit_once("::").map_or("", |(p, _)| p)
        };
        let above = own_folder.starts_with(&format!("{to}::")) || (to == "daemon" && from != to);
        if from.starts_with("daemon") && above {
            wrong.push(format!(
                "{from} imports from {to}, a module above its folder"
            ));
        }
        let (Some(a), Some(b)) = (daemon_unit(from), daemon_unit(to)) else {
            continue;
        };
        if a == b {
            continue;
        }
        folders
            .entry(a.to_string())
            .or_default()
            .insert(b.to_string());
        match daemon_rule(a) {
            None => wrong.push(format!(
                "daemon/{a} has no folder rule in tests/architecture.rs"
            )),
            Some(ok) if !ok.contains(&b) => {
                wrong.push(format!("daemon/{a} imports daemon/{b} ({from} uses {to})"))
            }
            Some(_) => {}
        }
    }
    if let Some(cycle) = find_cycle(&folders) {
        wrong.push(format!("folder cycle in daemon/: {}", cycle.join(" -> ")));
    }
    if let Some(root) = tree.files.get("daemon") {
        let text = std::fs::read_to_string(root).unwrap();
        let code = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("//"));
        for line in code {
            if !(line.starts_with("pub mod ")
                || line.starts_with("pub(crate) mod ")
                || line.starts_with("mod "))
            {
                wrong.push(format!(
                    "daemon/mod.rs should only list modules, found: {line}"
                ));
            }
        }
    }
    wrong
}

#[test]
fn no_layer_uses_one_above_it_and_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let wrong = layering_problems(&Tree::read(&src));
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn daemon_folders_import_only_their_rule_with_no_cycle_and_nothing_from_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = Tree::read(&src);
    // Every unit of the daemon has a rule (a new folder must be placed on purpose).
    let units: BTreeSet<&str> = tree.files.keys().filter_map(|m| daemon_unit(m)).collect();
    assert!(units.len() >= 12, "{units:?}");
    let wrong = daemon_problems(&tree);
    assert!(
        wrong.is_empty(),
        "daemon structure broken:\n{}",
        wrong.join("\n")
    );
}

/// Function lengths in a file: (name, first line, lines), counted from `fn` to its closing
/// brace (strings and comments do not count braces).
fn function_lengths(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(at) = t.find("fn ") else { continue };
        let head = &t[..at];
        let is_fn = head.split_whitespace().all(|w| {
            [
                "pub",
                "pub(crate)",
                "pub(super)",
                "async",
                "unsafe",
                "const",
            ]
            .contains(&w)
        });
        if !is_fn || t.starts_with("//") {
            continue;
        }
        let name: String = t[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (mut depth, mut opened) = (0i32, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            let code = strip_strings(l.split("//").next().unwrap_or(""));
            if !opened && code.trim_end().ends_with(';') && !code.contains('{') {
                break; // a declaration without a body
            }
            for c in code.chars() {
                match c {
                    '{' => (depth, opened) = (depth + 1, true),
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth == 0 {
                out.push((name.clone(), i + 1, j - i + 1));
                break;
            }
        }
    }
    out
}

/// A line without the contents of its string and char literals.
fn strip_strings(line: &str) -> String {
    let (mut out, mut in_str, mut escaped) = (String::new(), false, false);
    for c in line.chars() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else if c == '"' {
            in_str = true;
        } else {
            out.push(c);
        }
    }
    out.replace("'{'", "").replace("'}'", "")
}

const MAX_FUNCTION_LINES: usize = 80;

fn long_functions(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&src.join("daemon"), &mut files);
    rust_files(&src.join("backend"), &mut files);
    let mut long = Vec::new();
    for f in files {
        for (name, line, n) in function_lengths(&std::fs::read_to_string(&f).unwrap()) {
            if n > MAX_FUNCTION_LINES {
                long.push(format!("{}:{line} {name}: {n} lines", f.display()));
            }
        }
    }
    long
}

#[test]
fn no_function_on_the_serving_path_is_over_80_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let long = long_functions(&src);
    assert!(
        long.is_empty(),
        "over {MAX_FUNCTION_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// A copy of the real `src/` with `edit` applied to one file.
fn tree_with(file: &str, edit: impl FnOnce(String) -> String) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            let dest = to.join(p.file_name().unwrap());
            if p.is_dir() {
                copy(&p, &dest);
            } else {
                std::fs::copy(&p, &dest).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    copy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        tmp.path(),
    );
    let target = tmp.path().join(file);
    let text = std::fs::read_to_string(&target).unwrap();
    std::fs::write(&target, edit(text)).unwrap();
    tmp
}

#[test]
fn the_checks_fail_on_an_injected_folder_cycle_an_upward_import_and_a_long_function() {
    // pipeline → swap, while swap → pipeline (the shadow implements pipeline's BatchWatcher).
    let cycle = tree_with("daemon/pipeline/workers.rs", |t| {
        t + "\n#[allow(unused)]\nuse crate::daemon::swap::shadow::Shadow;\n"
    });
    let wrong = daemon_problems(&Tree::read(cycle.path()));
    assert!(
        wrong
            .iter()
            .any(|w| w.starts_with("folder cycle in daemon/")),
        "{wrong:?}"
    );
    assert!(
        wrong
            .iter()
            .any(|w| w.contains("daemon/pipeline imports daemon/swap")),
        "{wrong:?}"
    );
    // A helper defined in daemon/mod.rs and used from below it, through `super::`.
    let upward = tree_with("daemon/mod.rs", |t| t + "\npub(crate) fn helper() {}\n");
    std::fs::write(
        upward.path().join("daemon/kafka/mod.rs"),
        std::fs::read_to_string(upward.path().join("daemon/kafka/mod.rs")).unwrap()
            + "\n#[allow(unused)]\nuse super::helper;\n",
    )
    .unwrap();
    let wrong = daemon_problems(&Tree::read(upward.path()));
    assert!(
        wrong
            .iter()
            .any(|w| w == "daemon::kafka imports from daemon, a module above its folder"),
        "{wrong:?}"
    );
    assert!(
        wrong
            .iter()
            .any(|w| w.starts_with("daemon/mod.rs should only list modules")),
        "{wrong:?}"
    );
    // The real tree passes both (the test above), so these are the injected faults.
    let long = tree_with("daemon/pipeline/core.rs", |t| {
        let body = "    let _x = 1;\n".repeat(MAX_FUNCTION_LINES);
        format!("{t}\n#[allow(unused)]\nfn too_long() {{\n{body}}}\n")
    });
    let found = long_functions(long.path());
    assert!(
        found.len() == 1 && found[0].contains("too_long: 82 lines"),
        "{found:?}"
    );
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
