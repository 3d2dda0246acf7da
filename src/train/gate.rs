//! The gate between a candidate and users: `train report --before CURRENT` judges a candidate
//! and writes its verdict to `gate.json` in the candidate's directory; `train publish` reads it
//! and refuses a candidate that failed (or was judged as another model.onnx, or against a model
//! other than the one the registry serves) unless `--force`.
//!
//! Two sets of conditions, chosen by what the candidate is for:
//! - `default`: replacing the shipped default model (`ship_criteria`: issue 15's conditions).
//! - `refresh`: a fine-tune of the model in production on a team's corrections
//!   (`train report --feedback DATASET`): no significant loss on GoEmotions test (the paired
//!   bootstrap interval of the macro-F1 difference reaches 0), no significant loss of agreement
//!   with the moderators on the held-out corrections (the same rule on micro-F1), and no label
//!   newly firing at noise-level precision.

use crate::backend::ort::RuntimeOptions;
use crate::model::dir::{ModelCard, ModelDir};
use crate::model::eval::dataset::Split;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const GATE_FILE: &str = "gate.json";

/// Largest drop of test macro-F1 from the previous version a new default may have.
const MAX_MACRO_F1_DROP: f64 = 0.005;
/// Lowest test precision a label may fire with where it has at least `MIN_SUPPORT` examples.
const MIN_FIRING_PRECISION: f64 = 0.2;
const MIN_SUPPORT: usize = 5;

/// One condition a candidate must meet (see `gate`), and how this one fares.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Criterion {
    pub name: String,
    pub met: bool,
    pub detail: String,
}

/// The conditions for `card` to replace `before` as the shipped default: test macro-F1 no more
/// than 0.005 below; no label with 5+ test examples firing with precision under 0.2; test ECE
/// lower. Empty when either card lacks a test evaluation. `before_ece_measured`: the previous
/// model's test ECE measured from its scores now, for a card that records none.
pub fn ship_criteria(
    card: &ModelCard,
    before: &ModelCard,
    before_ece_measured: Option<f64>,
) -> Vec<Criterion> {
    let (Some(new), Some(old)) = (card.metrics.get("test"), before.metrics.get("test")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let (a, b) = (new.metrics.macro_f1, old.metrics.macro_f1);
    out.push(Criterion {
        name: format!(
            "test macro-F1 at most {MAX_MACRO_F1_DROP} below {}",
            before.version
        ),
        met: a >= b - MAX_MACRO_F1_DROP,
        detail: format!("{a:.4} vs {b:.4} ({:+.4})", a - b),
    });
    let low: Vec<String> = noisy_labels(card)
        .into_iter()
        .map(|(l, p)| format!("{l} {p:.3}"))
        .collect();
    out.push(Criterion {
        name: format!(
            "no label with {MIN_SUPPORT}+ test examples fires with precision below {MIN_FIRING_PRECISION}"
        ),
        met: low.is_empty(),
        detail: if low.is_empty() {
            "none".into()
        } else {
            low.join(", ")
        },
    });
    // The previous version's ECE: its own card's, or (when this model is it, calibrated) the
    // uncalibrated scores' here, or else measured from its scores on test now.
    let recorded = old.reliability.as_ref().map(|r| r.ece).or_else(|| {
        card.calibration
            .as_ref()
            .filter(|c| c.uncalibrated_sha256 == before.model_sha256)
            .and(new.reliability_uncalibrated.as_ref())
            .map(|r| r.ece)
    });
    let old_ece = recorded.or(before_ece_measured);
    let measured_note = if recorded.is_none() && old_ece.is_some() {
        format!(
            " ({}'s measured on test here: its card records none)",
            before.version
        )
    } else {
        String::new()
    };
    let new_ece = new.reliability.as_ref().map(|r| r.ece);
    out.push(Criterion {
        name: format!("test ECE lower than {}", before.version),
        met: matches!((new_ece, old_ece), (Some(x), Some(y)) if x < y),
        detail: format!(
            "{} vs {}{measured_note}",
            new_ece.map_or("?".into(), |x| format!("{x:.4}")),
            old_ece.map_or("?".into(), |x| format!("{x:.4}"))
        ),
    });
    out
}

/// Which conditions judged the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    Default,
    Refresh,
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Gate::Default => "default",
            Gate::Refresh => "refresh",
        })
    }
}

/// Labels with `MIN_SUPPORT`+ test examples that fire with precision below
/// `MIN_FIRING_PRECISION` on the card's test evaluation (none without one).
fn noisy_labels(card: &ModelCard) -> Vec<(String, f64)> {
    card.metrics
        .get("test")
        .map(|e| {
            e.metrics
                .per_label
                .iter()
                .filter(|l| {
                    l.support >= MIN_SUPPORT
                        && l.tp.unwrap_or(0) + l.fp.unwrap_or(0) > 0
                        && l.precision < MIN_FIRING_PRECISION
                })
                .map(|l| (l.label.clone(), l.precision))
                .collect()
        })
        .unwrap_or_default()
}

/// A model as the verdict names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
    pub model_sha256: String,
}

impl ModelRef {
    pub fn of(card: &ModelCard) -> ModelRef {
        ModelRef {
            name: card.name.clone(),
            version: card.version.clone(),
            model_sha256: card.model_sha256.clone(),
        }
    }
}

/// `gate.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub gate: Gate,
    pub candidate: ModelRef,
    pub before: ModelRef,
    pub criteria: Vec<Criterion>,
    pub passed: bool,
    /// Refresh: both models on the imported dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackComparison>,
}

impl Verdict {
    pub fn new(
        gate: Gate,
        card: &ModelCard,
        before: &ModelCard,
        criteria: Vec<Criterion>,
        feedback: Option<FeedbackComparison>,
    ) -> Verdict {
        Verdict {
            gate,
            candidate: ModelRef::of(card),
            before: ModelRef::of(before),
            passed: !criteria.is_empty() && criteria.iter().all(|c| c.met),
            criteria,
            feedback,
        }
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(GATE_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The verdict kept in a model directory, if it was judged.
    pub fn read(dir: &Path) -> Result<Option<Verdict>> {
        let path = dir.join(GATE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display()))
    }
}

/// Two models side by side on one set of corrected comments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideBySide {
    pub comments: usize,
    /// Micro-F1 against the moderators' labels at each model's own thresholds.
    pub micro_f1: [f64; 2],
    /// Mean score of the labels the moderators chose (candidate, before).
    pub mean_corrected_score: [f64; 2],
    /// Candidate − before micro-F1 with its paired bootstrap 95% interval (none when empty).
    pub micro_f1_difference: Option<(f64, [f64; 2])>,
}

/// Both models on the dataset `train data import` wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackComparison {
    pub dataset: String,
    pub heldout_sha256: String,
    pub heldout: SideBySide,
    /// The comments the candidate was trained on (how much it learnt them, not a judgement).
    pub trained_on: SideBySide,
}

fn side_by_side(model: &Path, before: &Path, tsv: &Path) -> Result<(SideBySide, String)> {
    let runtime = RuntimeOptions::default();
    let (new_m, split, new) = super::evaluate::score_split(model, tsv, &runtime)?;
    let (old_m, _, old) = super::evaluate::score_split(before, tsv, &runtime)?;
    let n = new_m.dir.card.labels.len();
    let targets = split.targets(n);
    let names = new_m.dir.card.labels.names().to_vec();
    let micro = |scores: &[Vec<f32>], card: &ModelCard| {
        if scores.is_empty() {
            return 0.0;
        }
        crate::model::eval::scores::evaluate(scores, &targets, &card.thresholds.resolved(n), &names)
            .micro_f1
    };
    let mean = |scores: &[Vec<f32>]| mean_corrected_score(scores, &split);
    let (a, b) = (
        new_m.dir.card.thresholds.resolved(n),
        old_m.dir.card.thresholds.resolved(n),
    );
    Ok((
        SideBySide {
            comments: split.examples.len(),
            micro_f1: [micro(&new, &new_m.dir.card), micro(&old, &old_m.dir.card)],
            mean_corrected_score: [mean(&new), mean(&old)],
            micro_f1_difference: (!split.examples.is_empty()).then(|| {
                super::bootstrap::paired_micro_f1_difference((&new, &a), (&old, &b), &targets)
            }),
        },
        split.sha256,
    ))
}

/// The mean, over every (comment, label the moderators chose), of the model's score.
pub fn mean_corrected_score(scores: &[Vec<f32>], split: &Split) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (row, e) in scores.iter().zip(&split.examples) {
        for &j in &e.labels {
            sum += row[j] as f64;
            n += 1;
        }
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Scores both models on `dataset`'s heldout.tsv and train.tsv.
pub fn compare_on_feedback(
    model: &Path,
    before: &Path,
    dataset: &Path,
) -> Result<FeedbackComparison> {
    let (heldout, heldout_sha256) = side_by_side(model, before, &dataset.join("heldout.tsv"))?;
    let (trained_on, _) = side_by_side(model, before, &dataset.join("train.tsv"))?;
    Ok(FeedbackComparison {
        dataset: dataset.display().to_string(),
        heldout_sha256,
        heldout,
        trained_on,
    })
}

/// The refresh conditions. `paired` is the test macro-F1 difference (candidate − before) with
/// its paired bootstrap 95% interval.
pub fn refresh_criteria(
    card: &ModelCard,
    before: &ModelCard,
    paired: Option<(f64, [f64; 2])>,
    feedback: &FeedbackComparison,
) -> Vec<Criterion> {
    let mut out = Vec::new();
    let test = |c: &ModelCard| c.metrics.get("test").map(|e| e.metrics.macro_f1);
    out.push(Criterion {
        name: format!(
            "GoEmotions test macro-F1 not significantly below {} (paired bootstrap 95% interval of the difference reaches 0)",
            before.version
        ),
        met: paired.is_some_and(|(_, [_, hi])| hi >= 0.0),
        detail: match (test(card), test(before), paired) {
            (Some(a), Some(b), Some((d, [lo, hi]))) => {
                format!("{a:.4} vs {b:.4} ({d:+.4}; interval {lo:+.4} to {hi:+.4})")
            }
            _ => "no paired test comparison (both cards need `train evaluate --write`)".into(),
        },
    });
    let h = &feedback.heldout;
    // Not "at least as high": a few dozen held-out comments cannot tell a small loss from
    // chance, so the same paired-interval rule as on test (a clear loss fails).
    out.push(Criterion {
        name: format!(
            "held-out corrections: micro-F1 not significantly below {}'s (paired bootstrap 95% interval of the difference reaches 0)",
            before.version
        ),
        met: h.micro_f1_difference.is_some_and(|(_, [_, hi])| hi >= 0.0),
        detail: match h.micro_f1_difference {
            None => "heldout.tsv is empty: nothing to judge the corrections by (import with --heldout-percent above 0)".into(),
            Some((d, [lo, hi])) => format!(
                "{:.4} vs {:.4} on {} comments ({d:+.4}; interval {lo:+.4} to {hi:+.4}); mean score of the moderators' labels {:.3} vs {:.3}",
                h.micro_f1[0], h.micro_f1[1], h.comments, h.mean_corrected_score[0], h.mean_corrected_score[1]
            ),
        },
    });
    let was_low: Vec<String> = noisy_labels(before).into_iter().map(|(l, _)| l).collect();
    let newly: Vec<String> = noisy_labels(card)
        .into_iter()
        .filter(|(l, _)| !was_low.contains(l))
        .map(|(l, p)| format!("{l} {p:.3}"))
        .collect();
    out.push(Criterion {
        name: format!(
            "no label with {MIN_SUPPORT}+ test examples newly fires with precision below {MIN_FIRING_PRECISION}"
        ),
        met: card.metrics.contains_key("test") && newly.is_empty(),
        detail: match (newly.is_empty(), was_low.is_empty()) {
            (false, _) => newly.join(", "),
            (true, true) => "none".into(),
            (true, false) => format!("none (already below under {}: {})", before.version, was_low.join(", ")),
        },
    });
    out
}

/// Why `train publish` should not put `dir` in front of users, if it should not: a failed
/// verdict, a verdict about another model.onnx, or one against a model other than `serving`
/// (the registry's active version's card), when going live.
pub fn refusal(dir: &ModelDir, serving: Option<&ModelCard>) -> Result<Option<String>> {
    let Some(v) = Verdict::read(&dir.dir)? else {
        return Ok(None);
    };
    if v.candidate.model_sha256 != dir.card.model_sha256 {
        return Ok(Some(format!(
            "{GATE_FILE} judged model.onnx sha256 {}, but this one is {}: run `train report --before` again",
            v.candidate.model_sha256, dir.card.model_sha256
        )));
    }
    if !v.passed {
        let unmet: Vec<String> = v
            .criteria
            .iter()
            .filter(|c| !c.met)
            .map(|c| format!("{} ({})", c.name, c.detail))
            .collect();
        return Ok(Some(format!(
            "{} {} failed the {} gate against {} {}: {}",
            v.candidate.name,
            v.candidate.version,
            v.gate,
            v.before.name,
            v.before.version,
            if unmet.is_empty() {
                "no condition could be judged".into()
            } else {
                unmet.join("; ")
            }
        )));
    }
    if let Some(s) = serving {
        if s.model_sha256 != v.before.model_sha256 {
            return Ok(Some(format!(
                "judged against {} {} but the registry serves {} {}: judge it against the model it replaces",
                v.before.name, v.before.version, s.name, s.version
            )));
        }
    }
    Ok(None)
}

/// Refuses with `why` unless forced (then says it went ahead).
pub fn enforce(why: Option<String>, force: bool) -> Result<()> {
    match (why, force) {
        (None, _) => Ok(()),
        (Some(w), true) => {
            eprintln!("warning: publishing despite the gate (--force): {w}");
            Ok(())
        }
        (Some(w), false) => bail!("refused: {w} (--force publishes it anyway)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(path: &str) -> ModelCard {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    #[test]
    fn ship_criteria_refuse_the_measured_candidate_and_accept_one_that_meets_them() {
        // The real cards: 1.0.0 (shipped until 1.2.0, docs/previous) and the calibrated 1.1.0
        // candidate (docs/candidates).
        let old = previous();
        let mut new = card("docs/candidates/goemotions-minilm-l6-1.1.0/model.json");
        let met: Vec<bool> = ship_criteria(&new, &old, None)
            .iter()
            .map(|c| c.met)
            .collect();
        assert_eq!(
            met,
            [false, true, true],
            "macro-F1 too low; precision and ECE met"
        );
        // 1.0.0's ECE comes from the candidate's uncalibrated scores (1.0.0's card has none).
        assert!(ship_criteria(&new, &old, None)[2]
            .detail
            .contains(" vs 0.0042"));

        // Within 0.005 of the old macro-F1, every condition holds.
        let t = new.metrics.get_mut("test").unwrap();
        t.metrics.macro_f1 = old.metrics["test"].metrics.macro_f1 - 0.004;
        assert!(ship_criteria(&new, &old, None).iter().all(|c| c.met));
        // A label with 5+ test examples firing at precision 0.15 breaks it; at 4 examples not.
        let t = new.metrics.get_mut("test").unwrap();
        let l = t
            .metrics
            .per_label
            .iter_mut()
            .find(|l| l.label == "relief")
            .unwrap();
        (l.precision, l.support) = (0.15, 5);
        let c = ship_criteria(&new, &old, None);
        assert!(
            !c[1].met && c[1].detail.contains("relief 0.150"),
            "{}",
            c[1].detail
        );
        let t = new.metrics.get_mut("test").unwrap();
        t.metrics
            .per_label
            .iter_mut()
            .find(|l| l.label == "relief")
            .unwrap()
            .support = 4;
        assert!(ship_criteria(&new, &old, None)[1].met);
        // Without calibration data there is no ECE to compare: not met.
        new.metrics.get_mut("test").unwrap().reliability = None;
        assert!(!ship_criteria(&new, &old, None)[2].met);

        // A candidate that is not the previous model calibrated: the previous model's ECE is
        // the one measured from its test scores (its card records none), and it is named so.
        let mut other = card("docs/candidates/goemotions-minilm-l6-1.1.0/model.json");
        other.calibration.as_mut().unwrap().uncalibrated_sha256 = "another model".into();
        assert!(
            !ship_criteria(&other, &old, None)[2].met,
            "nothing to compare"
        );
        let c = &ship_criteria(&other, &old, Some(0.0042))[2];
        assert!(
            c.met
                && c.detail
                    .contains("0.0019 vs 0.0042 (1.0.0's measured on test here"),
            "{}",
            c.detail
        );
        assert!(!ship_criteria(&other, &old, Some(0.0010))[2].met);
    }

    /// 1.0.0, the default model 1.2.0 replaced: the cards here were judged against it.
    fn previous() -> ModelCard {
        card("docs/previous/goemotions-minilm-l6-1.0.0/model.json")
    }

    fn shipped() -> ModelCard {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/goemotions-minilm-l6/model.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    fn feedback(comments: usize, diff: Option<(f64, [f64; 2])>) -> FeedbackComparison {
        let s = SideBySide {
            comments,
            micro_f1: [0.6, 0.6],
            mean_corrected_score: [0.5, 0.4],
            micro_f1_difference: diff,
        };
        FeedbackComparison {
            dataset: "d".into(),
            heldout_sha256: "h".into(),
            heldout: s.clone(),
            trained_on: s,
        }
    }

    #[test]
    fn the_refresh_gate_fails_a_clear_loss_an_empty_heldout_set_and_a_newly_noisy_label() {
        let before = previous();
        let mut card = before.clone();
        card.version = "1.0.1".into();
        let met = |c: &[Criterion]| c.iter().map(|c| c.met).collect::<Vec<_>>();
        // A small loss whose interval reaches 0 passes; grief was noisy already, so not counted.
        let ok = refresh_criteria(
            &card,
            &before,
            Some((-0.003, [-0.01, 0.004])),
            &feedback(8, Some((-0.02, [-0.2, 0.1]))),
        );
        assert_eq!(met(&ok), [true, true, true]);
        assert!(
            ok[2].detail.contains("already below under 1.0.0: grief"),
            "{}",
            ok[2].detail
        );
        // A clear loss on test, on the held-out corrections, or nothing held out: not met.
        let c = refresh_criteria(
            &card,
            &before,
            Some((-0.03, [-0.04, -0.02])),
            &feedback(8, Some((-0.5, [-0.8, -0.3]))),
        );
        assert_eq!(met(&c), [false, false, true]);
        let c = refresh_criteria(&card, &before, None, &feedback(0, None));
        assert_eq!(met(&c)[..2], [false, false]);
        assert!(c[1].detail.contains("heldout.tsv is empty"));
        // A label that was fine under 1.0.0 now firing at precision 0.1 with 5+ examples.
        let l = card
            .metrics
            .get_mut("test")
            .unwrap()
            .metrics
            .per_label
            .iter_mut()
            .find(|l| l.label == "joy")
            .unwrap();
        l.precision = 0.1;
        let c = refresh_criteria(
            &card,
            &before,
            Some((0.0, [-0.01, 0.01])),
            &feedback(8, Some((0.0, [-0.1, 0.1]))),
        );
        assert_eq!(met(&c), [true, true, false]);
        assert!(c[2].detail.starts_with("joy 0.100"), "{}", c[2].detail);
    }

    #[test]
    fn publish_is_refused_for_a_failed_a_stale_or_a_misdirected_verdict() {
        let tmp = tempfile::tempdir().unwrap();
        let shipped_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/goemotions-minilm-l6");
        for f in ["model.json", "model.onnx", "tokenizer.json"] {
            std::fs::copy(shipped_dir.join(f), tmp.path().join(f)).unwrap();
        }
        let dir = ModelDir::load(tmp.path(), true).unwrap();
        let before = shipped();
        let mut other = before.clone();
        (other.version, other.model_sha256) = ("0.9.0".into(), "ab".repeat(32));
        // Not judged: nothing to refuse.
        assert_eq!(refusal(&dir, Some(&before)).unwrap(), None);
        let passed = Criterion {
            name: "c".into(),
            met: true,
            detail: "fine".into(),
        };
        let failed = Criterion {
            name: "test macro-F1".into(),
            met: false,
            detail: "0.40 vs 0.52".into(),
        };
        Verdict::new(
            Gate::Refresh,
            &dir.card,
            &before,
            vec![passed.clone()],
            None,
        )
        .write(tmp.path())
        .unwrap();
        assert_eq!(refusal(&dir, Some(&before)).unwrap(), None);
        assert_eq!(
            refusal(&dir, None).unwrap(),
            None,
            "not going live: any registry"
        );
        let why = refusal(&dir, Some(&other)).unwrap().unwrap();
        assert!(
            why.contains("the registry serves goemotions-minilm-l6 0.9.0"),
            "{why}"
        );
        Verdict::new(
            Gate::Refresh,
            &dir.card,
            &before,
            vec![passed, failed],
            None,
        )
        .write(tmp.path())
        .unwrap();
        let why = refusal(&dir, Some(&before)).unwrap().unwrap();
        assert!(
            why.contains("failed the refresh gate") && why.contains("test macro-F1 (0.40 vs 0.52)"),
            "{why}"
        );
        assert!(enforce(Some(why.clone()), false)
            .unwrap_err()
            .to_string()
            .contains("--force"));
        assert!(enforce(Some(why), true).is_ok());
        Verdict::new(Gate::Default, &other, &before, vec![], None)
            .write(tmp.path())
            .unwrap();
        let why = refusal(&dir, Some(&before)).unwrap().unwrap();
        assert!(why.contains("judged model.onnx sha256 abab"), "{why}");
    }
}
