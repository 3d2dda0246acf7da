//! The metrics the daemon registers are exactly the ones docs/metrics.md documents.
//!
//! Reads text only (no dependency on the crate): every metric name in `src/**/*.rs` — the first
//! argument of a metrics macro (`counter!`, `gauge!`, `histogram!`, and their `describe_*`
//! forms, however the call is split over lines), and names written into the `/metrics` text by
//! hand (after `# TYPE `, or before `{{` in a format string) — against the backticked
//! `emostream_*` names in the first column of docs/metrics.md's tables.

use std::collections::BTreeSet;
use std::path::Path;

const MACROS: [&str; 3] = ["counter!", "gauge!", "histogram!"];

#[derive(Debug, Default)]
struct Registered {
    names: BTreeSet<String>,
    /// Macro calls whose name is not a string literal: this check cannot read them.
    opaque: Vec<String>,
}

/// The metric-name characters at the start of `s`.
fn name_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Adds what one source file registers.
fn scan(file: &str, src: &str, out: &mut Registered) {
    for m in MACROS {
        for (at, _) in src.match_indices(m) {
            let rest = src[at + m.len()..].trim_start();
            let Some(args) = rest.strip_prefix(|c: char| matches!(c, '(' | '[' | '{')) else {
                continue;
            };
            let args = args.trim_start();
            match args.strip_prefix('"') {
                Some(lit) => {
                    out.names.insert(name_at(lit).to_string());
                }
                None => {
                    let call = args.lines().next().unwrap_or("");
                    out.opaque.push(format!("{file}: {m}({call}"));
                }
            }
        }
    }
    // Exposition text written by hand: `# TYPE name kind`, and `name{{label=...}}` in a format
    // string.
    for (at, _) in src.match_indices("# TYPE ") {
        let name = name_at(&src[at + "# TYPE ".len()..]);
        if !name.is_empty() {
            out.names.insert(name.to_string());
        }
    }
    for (at, _) in src.match_indices("emostream_") {
        let name = name_at(&src[at..]);
        if src[at + name.len()..].starts_with("{{") {
            out.names.insert(name.to_string());
        }
    }
}

fn scan_dir(dir: &Path, out: &mut Registered) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            scan_dir(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let src = std::fs::read_to_string(&p).expect("a source file");
            scan(&p.display().to_string(), &src, out);
        }
    }
}

/// The `emostream_*` names in backticks in the first column of the Markdown tables.
fn documented(md: &str) -> BTreeSet<String> {
    md.lines()
        .filter_map(|l| l.trim_start().strip_prefix('|'))
        .filter_map(|row| row.split('|').next())
        .flat_map(|cell| cell.split('`').skip(1).step_by(2))
        .map(name_at)
        .filter(|n| n.starts_with("emostream_"))
        .map(str::to_string)
        .collect()
}

/// `Err` naming what is missing on each side.
fn compare(registered: &BTreeSet<String>, documented: &BTreeSet<String>) -> Result<(), String> {
    let undocumented: Vec<_> = registered.difference(documented).collect();
    let unregistered: Vec<_> = documented.difference(registered).collect();
    if undocumented.is_empty() && unregistered.is_empty() {
        return Ok(());
    }
    Err(format!(
        "registered but not in docs/metrics.md: {undocumented:?}\n\
         in docs/metrics.md but registered nowhere: {unregistered:?}"
    ))
}

#[test]
fn every_registered_metric_is_documented_and_every_documented_one_is_registered() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Registered::default();
    scan_dir(&root.join("src"), &mut found);
    assert!(
        found.opaque.is_empty(),
        "metrics named by an expression, which this check cannot read (name them with a literal): {:#?}",
        found.opaque
    );
    // The scan itself works: a macro call and the hand-written exposition are both seen.
    for known in ["emostream_consumed_total", "emostream_consumer_lag"] {
        assert!(
            found.names.contains(known),
            "{known} not found in src/: {:?}",
            found.names
        );
    }
    let md = std::fs::read_to_string(root.join("docs/metrics.md")).expect("docs/metrics.md");
    if let Err(e) = compare(&found.names, &documented(&md)) {
        panic!("{e}");
    }
}

#[test]
fn the_check_reports_a_metric_missing_on_either_side() {
    // Written as the daemon writes them: a call split over lines, a plain one, exposition text
    // by hand, and a name the check cannot read.
    let src = r##"
        metrics::counter!(
            "emostream_not_documented", "reason" => r.as_str()
        )
        .increment(1);
        metrics::gauge!("emostream_documented").set(1.0);
        let mut out = String::from("# HELP emostream_fake_lag Lag\n# TYPE emostream_fake_lag gauge\n");
        let _ = writeln!(out, "emostream_fake_lag{{topic=\"{t}\"}} {l}");
        metrics::histogram!(name).record(1.0);
    "##;
    let mut found = Registered::default();
    scan("fake.rs", src, &mut found);
    let expected: BTreeSet<String> = [
        "emostream_documented",
        "emostream_fake_lag",
        "emostream_not_documented",
    ]
    .map(String::from)
    .into();
    assert_eq!(found.names, expected);
    assert_eq!(found.opaque, ["fake.rs: histogram!(name).record(1.0);"]);

    let md = "| metric | type |\n| --- | --- |\n\
              | `emostream_documented` | gauge |\n\
              | `emostream_fake_lag` | gauge |\n\
              | `emostream_not_registered` | counter, unlike `emostream_other` |\n";
    let docs = documented(md);
    assert!(
        !docs.contains("emostream_other"),
        "only the first column names a metric"
    );
    let err = compare(&found.names, &docs).expect_err("the sets differ");
    assert!(
        err.contains("not in docs/metrics.md: [\"emostream_not_documented\"]"),
        "{err}"
    );
    assert!(
        err.contains("registered nowhere: [\"emostream_not_registered\"]"),
        "{err}"
    );
    assert!(compare(&expected, &expected).is_ok());
}
