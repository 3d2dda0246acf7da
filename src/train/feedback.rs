//! A team's own labelled comments as training data (`train data import`): moderators'
//! corrections from the feedback topic (docs/feedback-v1.schema.json) and/or JSONL/CSV files
//! (`text`, `labels` by name) become a dataset directory — `train.tsv` and `heldout.tsv` in
//! GoEmotions' format, split by comment id so the split never depends on arrival order — with
//! `provenance.json` (each source, its offsets or sha256, what was kept and dropped).
//!
//! Rules: the latest correction per (comment, moderator) wins (a later record supersedes an
//! earlier one); a comment corrected by several moderators gets the labels at least half of them
//! chose (the latest one's labels if no label reaches half); a correction without text
//! (source coordinates only) is counted and dropped (the text is not fetched back).

use crate::model::labels::LabelSet;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// One correction, wherever it came from; `seq` orders corrections (later wins).
#[derive(Debug, Clone, PartialEq)]
pub struct Correction {
    pub comment_id: String,
    pub moderator: String,
    pub text: Option<String>,
    /// Label names.
    pub labels: Vec<String>,
    pub seq: u64,
}

/// A feedback-topic record's value as a correction.
pub fn parse_feedback_record(payload: &[u8], seq: u64) -> Result<Correction> {
    let v: Value = serde_json::from_slice(payload).context("not JSON")?;
    if v["schema_version"] != 1 {
        bail!("schema_version is {} (1 expected)", v["schema_version"]);
    }
    let s = |k: &str| v[k].as_str().map(str::to_string);
    let comment_id = s("comment_id").context("no comment_id")?;
    check_id(&comment_id)?;
    Ok(Correction {
        comment_id,
        moderator: s("moderator").context("no moderator")?,
        text: s("text"),
        labels: labels_of(&v["labels"]).context("labels")?,
        seq,
    })
}

/// `["a", "b"]` or `"a,b"` (also `;`-separated).
fn labels_of(v: &Value) -> Result<Vec<String>> {
    let names: Vec<String> = match v {
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .context("a label is not a string")
            })
            .collect::<Result<_>>()?,
        Value::String(s) => s.split([',', ';']).map(|x| x.trim().to_string()).collect(),
        _ => bail!("expected an array of label names or a comma-separated string"),
    };
    Ok(names.into_iter().filter(|x| !x.is_empty()).collect())
}

/// Ids go into line- and tab-separated files: no control characters.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.chars().any(char::is_control) {
        bail!("comment id {id:?} is empty or has a control character");
    }
    Ok(())
}

/// A file's id for a row without one: the sha256 of its text, so the same text is the same
/// comment whichever file holds it.
fn text_id(text: &str) -> String {
    format!(
        "text-{}",
        &hex::encode(Sha256::digest(text.as_bytes()))[..16]
    )
}

/// A file row (`text`, `labels`, `id`?, `moderator`?) as a correction: it must have labels
/// and an id (given or made) that fits a TSV line.
fn row_correction(
    text: String,
    labels: Vec<String>,
    id: Option<String>,
    moderator: Option<String>,
    seq: u64,
) -> Result<Correction> {
    if labels.is_empty() {
        bail!("no labels (a comment with no emotion is labelled neutral)");
    }
    let comment_id = id.unwrap_or_else(|| text_id(&text));
    check_id(&comment_id)?;
    Ok(Correction {
        comment_id,
        moderator: moderator.unwrap_or_else(|| "file".into()),
        text: Some(text),
        labels,
        seq,
    })
}

/// Reads a JSONL (`.jsonl`/`.json`) or CSV (`.csv`, a header row naming `text` and `labels`)
/// file; `seq` numbers its rows from `first_seq`.
pub fn read_file(path: &Path, first_seq: u64) -> Result<Vec<Correction>> {
    let raw =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // A byte-order mark (spreadsheet exports) is not part of the first column's name.
    let raw = raw.strip_prefix('\u{feff}').unwrap_or(&raw);
    let csv = path.extension().is_some_and(|e| e == "csv");
    let mut out = Vec::new();
    if csv {
        let rows = parse_csv(raw);
        let Some((header, body)) = rows.split_first() else {
            return Ok(out);
        };
        let col = |name: &str| header.iter().position(|h| h.trim() == name);
        let (Some(t), Some(l)) = (col("text"), col("labels")) else {
            bail!(
                "{}: the header must name text and labels columns",
                path.display()
            );
        };
        let (id, m) = (col("id"), col("moderator"));
        for (n, row) in body.iter().enumerate() {
            let get = |i: Option<usize>| {
                i.and_then(|i| row.get(i))
                    .filter(|s| !s.is_empty())
                    .cloned()
            };
            let text = get(Some(t))
                .with_context(|| format!("{}: row {} has no text", path.display(), n + 2))?;
            let labels = labels_of(&Value::String(get(Some(l)).unwrap_or_default()))?;
            let row = row_correction(text, labels, get(id), get(m), first_seq + n as u64);
            out.push(row.with_context(|| format!("{}: row {}", path.display(), n + 2))?);
        }
    } else {
        for (n, line) in raw
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}", path.display(), n + 1))?;
            let text = v["text"]
                .as_str()
                .with_context(|| format!("{}:{}: no text", path.display(), n + 1))?;
            let labels =
                labels_of(&v["labels"]).with_context(|| format!("{}:{}", path.display(), n + 1))?;
            let s = |k: &str| v[k].as_str().map(str::to_string);
            let (id, moderator) = (s("id"), s("moderator"));
            let row = row_correction(
                text.to_string(),
                labels,
                id,
                moderator,
                first_seq + n as u64,
            );
            out.push(row.with_context(|| format!("{}:{}", path.display(), n + 1))?);
        }
    }
    Ok(out)
}

/// RFC 4180 CSV: fields separated by commas, quoted with `"` (a doubled `""` inside quotes is
/// one `"`), rows by CR LF or LF.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// One comment's training row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub comment_id: String,
    pub text: String,
    /// Label indices, ascending.
    pub labels: Vec<usize>,
    pub moderators: usize,
}

/// What the corrections became.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub corrections: usize,
    /// Replaced by a later correction of the same comment by the same moderator.
    pub superseded: usize,
    /// No text to train on (source coordinates only).
    pub without_text: usize,
    /// A label the model does not have.
    pub unknown_label: usize,
    pub comments: usize,
    pub train: usize,
    pub heldout: usize,
}

/// Whether a comment is held out: the first 8 bytes of sha256(comment id) below
/// `percent` % of the range (the same answer on every import and machine).
pub fn held_out(comment_id: &str, percent: u32) -> bool {
    let d = Sha256::digest(comment_id.as_bytes());
    let x = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    (x % 100) < u64::from(percent)
}

/// Merges corrections into one row per comment (rules in the module comment) and splits them.
pub fn build(
    corrections: &[Correction],
    labels: &LabelSet,
    heldout_percent: u32,
) -> (Vec<Row>, Vec<Row>, Counts) {
    let mut c = Counts {
        corrections: corrections.len(),
        ..Default::default()
    };
    // Latest per (comment, moderator).
    let mut latest: BTreeMap<(&str, &str), &Correction> = BTreeMap::new();
    for k in corrections {
        let key = (k.comment_id.as_str(), k.moderator.as_str());
        match latest.get(&key) {
            Some(old) if old.seq > k.seq => c.superseded += 1,
            Some(_) => {
                c.superseded += 1;
                latest.insert(key, k);
            }
            None => {
                latest.insert(key, k);
            }
        }
    }
    let mut by_comment: BTreeMap<&str, Vec<&Correction>> = BTreeMap::new();
    for ((comment, _), k) in latest {
        by_comment.entry(comment).or_default().push(k);
    }
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for (comment, mut ks) in by_comment {
        ks.sort_by_key(|k| k.seq);
        let Some(text) = ks.iter().rev().find_map(|k| k.text.clone()) else {
            c.without_text += 1;
            continue;
        };
        let index = |name: &String| labels.names().iter().position(|n| n == name);
        if ks
            .iter()
            .flat_map(|k| &k.labels)
            .any(|l| index(l).is_none())
        {
            c.unknown_label += 1;
            continue;
        }
        let votes = |i: usize| {
            ks.iter()
                .filter(|k| k.labels.iter().any(|l| index(l) == Some(i)))
                .count()
        };
        let mut chosen: Vec<usize> = (0..labels.len())
            .filter(|&i| 2 * votes(i) >= ks.len())
            .collect();
        if chosen.is_empty() {
            chosen = ks
                .last()
                .expect("one correction")
                .labels
                .iter()
                .filter_map(index)
                .collect();
            chosen.sort_unstable();
        }
        let row = Row {
            comment_id: comment.to_string(),
            // The TSV format has one line per row, tab-separated.
            text: text.replace(['\t', '\n', '\r'], " "),
            labels: chosen,
            moderators: ks.len(),
        };
        c.comments += 1;
        if held_out(comment, heldout_percent) {
            heldout.push(row);
        } else {
            train.push(row);
        }
    }
    c.train = train.len();
    c.heldout = heldout.len();
    (train, heldout, c)
}

/// Writes `rows` as a GoEmotions TSV (`text <TAB> label indices <TAB> id`).
pub fn write_tsv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut out = String::new();
    for r in rows {
        let labels: Vec<String> = r.labels.iter().map(usize::to_string).collect();
        out.push_str(&format!(
            "{}\t{}\t{}\n",
            r.text,
            labels.join(","),
            r.comment_id
        ));
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(comment: &str, moderator: &str, labels: &[&str], seq: u64) -> Correction {
        Correction {
            comment_id: comment.into(),
            moderator: moderator.into(),
            text: Some(format!("text of {comment}")),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            seq,
        }
    }

    #[test]
    fn the_latest_correction_per_moderator_wins_and_half_the_moderators_decide() {
        let labels = LabelSet::goemotions();
        let mut no_text = k("c3", "m1", &["joy"], 6);
        no_text.text = None;
        let ks = vec![
            k("c1", "m1", &["anger"], 1),
            k("c1", "m1", &["annoyance"], 5), // supersedes the first
            k("c1", "m2", &["annoyance", "disgust"], 2),
            k("c1", "m3", &["disgust"], 3),
            k("c2", "m1", &["joy"], 4),
            no_text,
            k("c4", "m1", &["rage"], 7),
        ];
        let (train, heldout, c) = build(&ks, &labels, 0);
        assert!(heldout.is_empty());
        assert_eq!(
            (
                c.corrections,
                c.superseded,
                c.without_text,
                c.unknown_label,
                c.comments
            ),
            (7, 1, 1, 1, 2)
        );
        let name = |i: &usize| labels.name(*i).to_string();
        // annoyance 2/3, disgust 2/3, anger superseded.
        assert_eq!(
            train[0].labels.iter().map(name).collect::<Vec<_>>(),
            vec!["annoyance", "disgust"]
        );
        assert_eq!((train[0].moderators, train[1].moderators), (3, 1));
        // No label reaches half: the latest moderator's.
        let (train, _, _) = build(
            &[
                k("c5", "a", &["joy"], 1),
                k("c5", "b", &["fear"], 2),
                k("c5", "c", &["love"], 3),
            ],
            &labels,
            0,
        );
        assert_eq!(
            train[0].labels.iter().map(name).collect::<Vec<_>>(),
            vec!["love"]
        );
    }

    #[test]
    fn the_split_is_by_comment_id_and_the_same_on_every_import() {
        let labels = LabelSet::goemotions();
        let ks: Vec<Correction> = (0..400)
            .map(|i| k(&format!("c{i}"), "m", &["joy"], i))
            .collect();
        let (train, heldout, _) = build(&ks, &labels, 20);
        let share = heldout.len() as f64 / 400.0;
        assert!((0.13..0.27).contains(&share), "{share}");
        let mut reversed = ks.clone();
        reversed.reverse();
        let (train2, heldout2, _) = build(&reversed, &labels, 20);
        assert_eq!((train, heldout), (train2, heldout2));
    }

    #[test]
    fn jsonl_and_csv_files_read_text_and_labels_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("a.jsonl");
        std::fs::write(&j, "{\"text\": \"so happy\", \"labels\": [\"joy\"]}\n\n{\"id\": \"x\", \"text\": \"hm\", \"labels\": \"confusion, curiosity\", \"moderator\": \"m\"}\n").unwrap();
        let got = read_file(&j, 10).unwrap();
        assert_eq!(got[0].labels, vec!["joy"]);
        assert!(
            got[0].comment_id.starts_with("text-")
                && got[0].moderator == "file"
                && got[0].seq == 10
        );
        assert_eq!(
            (got[1].comment_id.as_str(), got[1].labels.len(), got[1].seq),
            ("x", 2, 12)
        );
        let c = dir.path().join("b.csv");
        std::fs::write(
            &c,
            "id,text,labels\r\nr1,\"Well, \"\"fine\"\"\",\"anger,annoyance\"\nr2,plain,neutral\n",
        )
        .unwrap();
        let got = read_file(&c, 0).unwrap();
        assert_eq!(got[0].text.as_deref(), Some("Well, \"fine\""));
        assert_eq!(got[0].labels, vec!["anger", "annoyance"]);
        assert_eq!(
            (got[1].comment_id.as_str(), got[1].labels.clone()),
            ("r2", vec!["neutral".to_string()])
        );
        let bad = dir.path().join("c.csv");
        std::fs::write(&bad, "words,tags\na,b\n").unwrap();
        assert!(format!("{:#}", read_file(&bad, 0).unwrap_err()).contains("text and labels"));
        std::fs::write(&bad, "\u{feff}text,labels\nfine,\n").unwrap();
        assert!(format!("{:#}", read_file(&bad, 0).unwrap_err()).contains("row 2: no labels"));
        std::fs::write(
            &j,
            "{\"id\": \"a\\nb\", \"text\": \"t\", \"labels\": [\"joy\"]}\n",
        )
        .unwrap();
        assert!(format!("{:#}", read_file(&j, 0).unwrap_err()).contains("control character"));
    }

    #[test]
    fn a_feedback_record_parses() {
        let rec = br#"{"schema_version":1,"feedback_id":"0123456789abcdef","comment_id":"c1","text":"t","labels":["anger"],"moderator":"m","model":{"name":"n","version":"1"},"received_at":"2026-01-01T00:00:00Z"}"#;
        let k = parse_feedback_record(rec, 3).unwrap();
        assert_eq!(
            (
                k.comment_id.as_str(),
                k.moderator.as_str(),
                k.labels.clone(),
                k.seq
            ),
            ("c1", "m", vec!["anger".to_string()], 3)
        );
        assert!(parse_feedback_record(b"{\"schema_version\":2}", 0).is_err());
    }
}
