//! Inference workers: dedicated threads that take batches, run each on the model generation
//! that tokenized it (length-sorted sub-batches padded to their own longest row), and turn
//! scores into label events. Off the async runtime, so polling and producing continue during
//! inference. Outcomes leave in batch order however many workers there are; the outcome of a
//! comment posted to the HTTP API goes back to its request. A shadow candidate, when one is
//! under evaluation, sees a sample of the batches; the moderators' live view sees every
//! labelled comment.

use crate::backend::batching::CallLimits;
use crate::backend::generation::Generation;
use crate::daemon::config::{OutputSettings, ScoreMode};
use crate::daemon::pipeline::context;
use crate::daemon::pipeline::decode::Reason;
use crate::daemon::pipeline::event;
use crate::daemon::pipeline::lanes::{Lanes, Taken};
use crate::daemon::pipeline::policy::{Decisions, PolicyFile, Rule};
use crate::daemon::pipeline::{Batch, Entry, Item, Outcome, Rejection};
use crate::daemon::supervise::{panic_message, Faults};
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Mutex, Notify};

/// Something shown each labelled comment as it is labelled (the moderators' live view).
pub(crate) trait Watcher: Send + Sync {
    /// `scores` in the order of `names` (the model's labels); `api`: the comment was posted to
    /// the HTTP API rather than consumed from Kafka.
    fn labelled(
        &self,
        item: &Item,
        names: &[String],
        scores: &[f32],
        event: &event::LabelEvent<'_>,
        api: bool,
    );
}

/// Something shown each batch the active model scored whole (a swap candidate under shadow
/// evaluation, swap/shadow.rs, scores a sample of them with its own model and compares).
pub(crate) trait BatchWatcher: Send + Sync {
    /// `texts` and `scores` row by row, as worker `worker` scored them on `active`.
    fn scored(
        &self,
        worker: usize,
        active: &Generation,
        texts: &[&str],
        scores: &[Vec<f32>],
        calls: CallLimits,
    );
}

/// What watches labelled comments besides the sink.
#[derive(Clone, Default)]
pub(crate) struct Observers {
    /// A candidate model under evaluation, scoring a sample of the batches.
    pub(crate) shadow: Option<Arc<dyn BatchWatcher>>,
    /// The last labelled comments and the counts of each emotion, for `/live`.
    pub(crate) live: Option<Arc<dyn Watcher>>,
}

/// Wraps a stream event (JSON) for its topic: the Schema Registry wire format under the
/// registered event schema (schemas/output.rs). An event it cannot wrap is dead-lettered.
pub(crate) trait EventFraming: Send + Sync {
    fn frame(&self, event: Vec<u8>) -> Result<Vec<u8>, String>;
}

/// How the workers turn scores into events.
#[derive(Clone)]
pub(crate) struct Labelling {
    pub(crate) output: OutputSettings,
    /// `output.encoding` other than JSON: how stream events are framed (API answers stay JSON).
    pub(crate) framing: Option<Arc<dyn EventFraming>>,
    /// Carried fields are read from the payload as JSON (`input.format = "json"`).
    pub(crate) json_input: bool,
    /// The policy file in force (`None` in it: every comment is decided by the model's own
    /// thresholds). Read at each batch: a new policy applies between batches.
    pub(crate) policy: watch::Receiver<Option<Arc<PolicyFile>>>,
}

impl Labelling {
    /// Events by `output`, decided by the model's own thresholds (no policy file).
    pub(crate) fn without_policy(output: OutputSettings, json_input: bool) -> Labelling {
        Labelling {
            output,
            framing: None,
            json_input,
            policy: watch::channel(None).1,
        }
    }
}

/// What labelling one batch needs: the settings and the policy resolved for its model.
struct BatchRules<'a> {
    labelling: &'a Labelling,
    decisions: Decisions,
    /// A policy file is in force: comments need their carried fields to be matched, and
    /// labels are counted per policy.
    by_policy: bool,
}

/// Labels one batch; every message of the batch yields exactly one outcome, in batch order.
fn label_batch(
    worker: usize,
    batch: Batch,
    calls: CallLimits,
    labelling: &Labelling,
    watch: &Observers,
) -> Vec<Outcome> {
    let file = labelling.policy.borrow().clone();
    let rules = BatchRules {
        labelling,
        decisions: Decisions::resolve(
            file.as_deref(),
            &batch.model.labels,
            &batch.model.thresholds,
        ),
        by_policy: file.is_some(),
    };
    let mut slots: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
    let (mut items, mut at) = (Vec::new(), Vec::new());
    for entry in batch.entries {
        match entry {
            // Its request gave up while the batch waited for a worker.
            Entry::Comment(item) if item.origin.is_abandoned() => item.origin.abandon(),
            Entry::Comment(item) => {
                at.push(slots.len());
                items.push(item);
                slots.push(None);
            }
            Entry::Rejected(r) => slots.push(Some(Outcome::Rejected(r))),
        }
    }
    if !items.is_empty() {
        let labelled = label_items(worker, &batch.model, items, calls, &rules, watch);
        for (i, o) in at.into_iter().zip(labelled) {
            slots[i] = Some(o);
        }
    }
    slots.into_iter().flatten().collect()
}

/// A batch's scores: all of them, or (after a failure was isolated) one result per row.
enum Scored {
    Whole(Vec<Vec<f32>>),
    Isolated(Vec<Result<Vec<f32>, String>>),
}

/// Scores rows; when ONNX Runtime fails, tries once more (a transient failure, e.g. memory),
/// then bisects so that only the rows that fail on their own get an error.
fn score_isolating(
    worker: usize,
    model: &Generation,
    rows: &[&[u32]],
    calls: CallLimits,
) -> Scored {
    match model.score(worker, rows, calls) {
        Ok(scores) => Scored::Whole(scores),
        Err(first) => {
            metrics::counter!("emostream_inference_errors_total").increment(1);
            tracing::warn!(error = %format!("{first:#}"), size = rows.len(), "inference failed; retrying once, then isolating the failing comments");
            match model.score(worker, rows, calls) {
                Ok(scores) => Scored::Whole(scores),
                Err(_) => Scored::Isolated(bisect(worker, model, rows, calls, first)),
            }
        }
    }
}

/// Splits a failing set of rows in halves until each failure is a single row.
fn bisect(
    worker: usize,
    model: &Generation,
    rows: &[&[u32]],
    calls: CallLimits,
    error: anyhow::Error,
) -> Vec<Result<Vec<f32>, String>> {
    if rows.len() == 1 {
        return vec![Err(format!("{error:#}"))];
    }
    let (left, right) = rows.split_at(rows.len() / 2);
    let mut out = Vec::with_capacity(rows.len());
    for half in [left, right] {
        match model.score(worker, half, calls) {
            Ok(scores) => out.extend(scores.into_iter().map(Ok)),
            Err(e) => out.extend(bisect(worker, model, half, calls, e)),
        }
    }
    out
}

/// Scores the comments of a batch on `model` and builds their events (or rejections).
fn label_items(
    worker: usize,
    model: &Generation,
    items: Vec<Item>,
    calls: CallLimits,
    rules: &BatchRules<'_>,
    watch: &Observers,
) -> Vec<Outcome> {
    let rows: Vec<&[u32]> = items.iter().map(|i| i.ids.as_slice()).collect();
    let started = Instant::now();
    let scored = score_isolating(worker, model, &rows, calls);
    metrics::histogram!("emostream_inference_seconds").record(started.elapsed().as_secs_f64());
    let scored: Vec<Result<Vec<f32>, String>> = match scored {
        Scored::Whole(scores) => {
            if let Some(sh) = &watch.shadow {
                let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
                sh.scored(worker, model, &texts, &scores, calls);
            }
            scores.into_iter().map(Ok).collect()
        }
        Scored::Isolated(results) => results,
    };
    let mut counters = LabelCounters::default();
    items
        .into_iter()
        .zip(scored)
        .map(|(item, s)| match s {
            Ok(s) => outcome(item, &s, model, rules, watch, &mut counters),
            Err(e) => inference_error(item.origin, e),
        })
        .collect()
}

fn inference_error(origin: crate::daemon::pipeline::Origin, detail: String) -> Outcome {
    Outcome::Rejected(Rejection {
        reason: Reason::InferenceError,
        detail,
        origin,
    })
}

fn labelled(
    event: Vec<u8>,
    origin: crate::daemon::pipeline::Origin,
    fired: Vec<metrics::Counter>,
    headers: Vec<(&'static str, String)>,
) -> Outcome {
    Outcome::Labelled {
        event,
        origin,
        fired,
        headers,
    }
}

/// The event's bytes: JSON, framed for a schema registry when the stream's events are.
fn encode(
    ev: &event::LabelEvent<'_>,
    framing: Option<&dyn EventFraming>,
) -> Result<Vec<u8>, (Reason, String)> {
    let json = serde_json::to_vec(ev)
        .map_err(|e| (Reason::InferenceError, format!("serialising event: {e}")))?;
    match framing {
        Some(f) => f.frame(json).map_err(|e| (Reason::SchemaMismatch, e)),
        None => Ok(json),
    }
}

/// `emostream_labels_total{label}` counters, looked up once per label that fires in a batch
/// rather than once per event and label.
/// And `emostream_policy_labels_total{policy,label}` when a policy file is in force.
#[derive(Default)]
struct LabelCounters {
    labels: std::collections::HashMap<String, metrics::Counter>,
    /// Policy → label → counter.
    by_policy:
        std::collections::HashMap<String, std::collections::HashMap<String, metrics::Counter>>,
}

impl LabelCounters {
    fn get(&mut self, label: &str) -> metrics::Counter {
        if let Some(c) = self.labels.get(label) {
            return c.clone();
        }
        let c = metrics::counter!("emostream_labels_total", "label" => label.to_string());
        self.labels.insert(label.to_string(), c.clone());
        c
    }

    fn by_policy(&mut self, policy: &str, label: &str) -> metrics::Counter {
        if let Some(c) = self.by_policy.get(policy).and_then(|m| m.get(label)) {
            return c.clone();
        }
        let c = metrics::counter!("emostream_policy_labels_total", "policy" => policy.to_string(), "label" => label.to_string());
        self.by_policy
            .entry(policy.to_string())
            .or_default()
            .insert(label.to_string(), c.clone());
        c
    }
}

/// One scored comment's outcome: its label event, or a rejection when the scores are not
/// finite or the event cannot be written.
fn outcome(
    item: Item,
    s: &[f32],
    model: &Generation,
    rules: &BatchRules<'_>,
    watch: &Observers,
    counters: &mut LabelCounters,
) -> Outcome {
    if s.iter().any(|x| !x.is_finite()) {
        return inference_error(item.origin, "model produced a non-finite score".into());
    }
    let out = &rules.labelling.output;
    // An API answer carries every label's score (the try-it page draws them all), no Kafka
    // source, and the model's own thresholds (it has no community); output.scores, the
    // schema version and the policy shape the stream's events.
    let api = item.origin.reply.is_some();
    let v2 = !api && out.schema_version == 2;
    let context = (v2 || (!api && rules.by_policy)).then(|| {
        let o = &item.origin;
        context::read(
            o.comment_bytes(),
            rules.labelling.json_input,
            o.position.timestamp_ms,
            out,
        )
    });
    let rule: Option<&Rule> =
        (!api).then(|| rules.decisions.rule_for(context.as_ref().map(|c| &c.input)));
    let ev = event::build(
        &item.id,
        s,
        &model.labels,
        rule.map_or(&model.thresholds, |r| &r.thresholds),
        if api { ScoreMode::All } else { out.scores },
        out.top_k,
        &model.model_ref,
        (!api).then_some(&item.origin.position),
        item.truncated,
    );
    let ev = match (v2, &context, rule) {
        (true, Some(c), Some(r)) => ev.with_context(
            c,
            event::PolicyRef {
                name: &r.name,
                hash: &r.hash,
            },
        ),
        _ => ev,
    };
    if let Some(live) = &watch.live {
        live.labelled(&item, &model.labels, s, &ev, api);
    }
    let mut fired: Vec<metrics::Counter> =
        ev.labels.iter().map(|l| counters.get(l.label)).collect();
    if let (true, Some(r)) = (rules.by_policy, rule) {
        fired.extend(
            ev.labels
                .iter()
                .map(|l| counters.by_policy(&r.name, l.label)),
        );
    }
    let headers = if out.cloudevents && !api {
        cloud_event_headers(&item.origin, &ev, out)
    } else {
        Vec::new()
    };
    let framing = rules.labelling.framing.as_deref().filter(|_| !api);
    match encode(&ev, framing) {
        Ok(event) => labelled(event, item.origin, fired, headers),
        Err((reason, detail)) => Outcome::Rejected(Rejection::new(reason, detail, item.origin)),
    }
}

/// CloudEvents binary-mode headers (Kafka protocol binding) for an event: its id is the input
/// coordinates and the model version, so a re-delivery after a crash has the same id.
fn cloud_event_headers(
    origin: &crate::daemon::pipeline::Origin,
    ev: &event::LabelEvent<'_>,
    out: &OutputSettings,
) -> Vec<(&'static str, String)> {
    let p = &origin.position;
    vec![
        ("ce_specversion", "1.0".to_string()),
        (
            "ce_id",
            format!(
                "{}-{}-{}-{}",
                p.topic, p.partition, p.offset, ev.model.version
            ),
        ),
        ("ce_source", out.cloudevents_source.clone()),
        (
            "ce_type",
            format!("io.emostream.label.v{}", ev.schema_version),
        ),
        ("ce_time", ev.processed_at.clone()),
        ("content-type", "application/json".to_string()),
    ]
}

/// Batches taken from the queue are numbered in queue order; whichever worker finishes,
/// outcomes leave in that order, so several workers never reorder a key's messages.
struct InOrder {
    taken: u64,
    next: u64,
    held: BTreeMap<u64, Vec<Outcome>>,
}

/// When each worker took the batch it is running (milliseconds since `started`; 0: idle), so
/// health can tell a worker stuck inside ONNX Runtime from one waiting for work, and the
/// batcher can hand a batch over at once when a worker has nothing to do.
pub(crate) struct WorkerClock {
    started: Instant,
    since: Vec<AtomicU64>,
    /// Signalled each time a worker finishes a batch.
    freed: Notify,
}

impl WorkerClock {
    pub(crate) fn new(n: usize) -> WorkerClock {
        WorkerClock {
            started: Instant::now(),
            since: (0..n).map(|_| AtomicU64::new(0)).collect(),
            freed: Notify::new(),
        }
    }

    pub(crate) fn set(&self, w: usize, busy: bool) {
        let now = (self.started.elapsed().as_millis() as u64).max(1);
        self.since[w].store(if busy { now } else { 0 }, Ordering::Relaxed);
        if !busy {
            self.freed.notify_one();
        }
    }

    /// The longest time any worker has been on its current batch.
    fn longest(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        let oldest = self
            .since
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|&t| t > 0)
            .min();
        Duration::from_millis(oldest.map_or(0, |t| now.saturating_sub(t)))
    }

    /// Why health should fail, when a worker has been on one batch longer than `limit`.
    pub(crate) fn stuck(&self, limit: Duration) -> Option<String> {
        let longest = self.longest();
        (longest > limit)
            .then(|| format!("an inference worker has been on one batch for {longest:?}"))
    }

    /// Workers not running a batch now.
    pub(crate) fn idle(&self) -> usize {
        self.since
            .iter()
            .filter(|a| a.load(Ordering::Relaxed) == 0)
            .count()
    }

    /// Resolves when a worker next finishes a batch (at once if one did since the last call).
    pub(crate) async fn freed(&self) {
        self.freed.notified().await
    }
}

/// Test builds only (`--features fault-injection`): `EMOSTREAM_FAULT_PANIC_AT_BATCH=N` makes
/// the worker that takes the N-th batch panic, to prove supervision. Absent from release builds.
#[cfg(feature = "fault-injection")]
fn injected_fault(seq: u64) {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var("EMOSTREAM_FAULT_PANIC_AT_BATCH")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if *at == Some(seq + 1) {
        panic!("fault injection: worker panics on batch {}", seq + 1);
    }
}

/// Sends an outcome to the request waiting for it. The request may have given up (timeout,
/// client gone): then nobody waits for it, and it is done.
fn answer(mut x: Outcome) {
    if let Some(reply) = x.take_reply() {
        if let Err(unanswered) = reply.send(x) {
            unanswered.done();
        }
    }
}

/// Holds stream batch `seq`'s outcomes until every earlier batch's have left, then sends
/// what is next in order; false once nobody takes outcomes any more.
fn release_in_order(
    order: &std::sync::Mutex<InOrder>,
    seq: u64,
    labelled: Vec<Outcome>,
    outcomes: &mpsc::Sender<Outcome>,
) -> bool {
    let mut o = order.lock().unwrap_or_else(|p| p.into_inner());
    o.held.insert(seq, labelled);
    loop {
        let next = o.next;
        let Some(ready) = o.held.remove(&next) else {
            return true;
        };
        o.next += 1;
        for x in ready {
            if x.has_reply() {
                answer(x);
            } else if outcomes.blocking_send(x).is_err() {
                return false;
            }
        }
    }
}

/// Starts `n` worker threads sharing the batch lanes (pipeline/lanes.rs); worker `w` runs
/// session `w` of each batch's model generation. The threads end when the stream's batch queue
/// closes. A worker that panics reports it to `faults` (the daemon then exits: see
/// supervise.rs); the batch it held is dropped unacknowledged, so its messages are read again
/// after the restart. An interactive batch's outcomes answer their requests at once; the
/// stream's leave in batch order.
pub(crate) fn spawn(
    n: usize,
    lanes: Lanes<Batch>,
    outcomes: mpsc::Sender<Outcome>,
    calls: CallLimits,
    labelling: Labelling,
    watch: Observers,
    faults: Arc<Faults>,
) -> Result<(Vec<std::thread::JoinHandle<()>>, Arc<WorkerClock>)> {
    let batches = Arc::new(Mutex::new(lanes));
    let order = Arc::new(std::sync::Mutex::new(InOrder {
        taken: 0,
        next: 0,
        held: BTreeMap::new(),
    }));
    let clock = Arc::new(WorkerClock::new(n));
    let mut handles = Vec::new();
    for w in 0..n {
        let watch = watch.clone();
        let batches = batches.clone();
        let order = order.clone();
        let outcomes = outcomes.clone();
        let labelling = labelling.clone();
        let faults = faults.clone();
        let clock = clock.clone();
        let work = move || loop {
            let (seq, batch) = {
                let mut lanes = batches.blocking_lock();
                match lanes.next() {
                    None => return,
                    Some(Taken::Interactive(batch)) => (None, batch),
                    Some(Taken::Stream(batch)) => {
                        // Numbered while the lanes are held: sequence = queue order.
                        let mut o = order.lock().unwrap_or_else(|p| p.into_inner());
                        o.taken += 1;
                        (Some(o.taken - 1), batch)
                    }
                }
            };
            clock.set(w, true);
            #[cfg(feature = "fault-injection")]
            if let Some(seq) = seq {
                injected_fault(seq);
            }
            let labelled = label_batch(w, batch, calls, &labelling, &watch);
            clock.set(w, false);
            let Some(seq) = seq else {
                labelled.into_iter().for_each(answer);
                continue;
            };
            if !release_in_order(&order, seq, labelled, &outcomes) {
                return;
            }
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("inference-{w}"))
                .spawn(move || {
                    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                        faults.fatal(format!(
                            "stage inference-{w} panicked: {}",
                            panic_message(&*p)
                        ));
                    }
                })?,
        );
    }
    Ok((handles, clock))
}
