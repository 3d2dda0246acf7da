//! Logging set-up and the Prometheus recorder with every metric's description.

use crate::daemon::config::LogFormat;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == LogFormat::Json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// How often buffered histogram samples are drained into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the global metrics recorder (once) and returns the handle that renders /metrics.
pub(crate) fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let secs = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
    let tokens = [
        16.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &secs)?
        .set_buckets_for_metric(Matcher::Full("emostream_batch_size".into()), &sizes)?
        .set_buckets_for_metric(Matcher::Full("emostream_batch_tokens".into()), &tokens)?
        .install_recorder()?;
    // Histogram samples are buffered until drained; install_recorder (unlike the exporter's own
    // HTTP listener) leaves draining to a scrape, so without a scraper they pile up (measured:
    // ~1.3 MB a minute at 300 comments/s). Drain on a timer of our own, whoever scrapes.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        })?;
    describe();
    metrics::gauge!("emostream_build_info", "version" => env!("CARGO_PKG_VERSION"), "git" => option_env!("EMOSTREAM_GIT_SHA").unwrap_or("unknown")).set(1.0);
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "emostream_http_connections",
        "Open connections to the admin HTTP server"
    );
    describe_counter!(
        "emostream_http_connections_refused_total",
        "Connections closed on accept because admin.max_connections were open"
    );
    describe_counter!(
        "emostream_http_request_timeouts_total",
        "Requests answered 503 because the handler took longer than admin.request_timeout_ms"
    );
    describe_counter!(
        "emostream_consumed_total",
        "Messages consumed from input topics"
    );
    describe_counter!(
        "emostream_labelled_total",
        "Label events acknowledged by the output topic"
    );
    describe_counter!(
        "emostream_dead_lettered_total",
        "Messages acknowledged by the dead-letter topic, by reason"
    );
    describe_counter!(
        "emostream_produce_errors_total",
        "Failed produce attempts, by topic kind"
    );
    describe_histogram!("emostream_batch_size", "Messages per inference batch");
    describe_histogram!("emostream_batch_tokens", "Tokens per inference batch");
    describe_histogram!("emostream_inference_seconds", "ONNX Runtime time per batch");
    describe_histogram!(
        "emostream_end_to_end_seconds",
        "End-to-end latency: Kafka timestamp of the input to the event's acknowledgement by the output topic"
    );
    describe_gauge!(
        "emostream_in_flight_messages",
        "Consumed messages not yet acknowledged"
    );
    describe_counter!(
        "emostream_acks_dropped_total",
        "Messages whose stage ended without delivering them (their offsets stay uncommitted)"
    );
    describe_gauge!(
        "emostream_in_flight_bytes",
        "Payload bytes of in-flight messages"
    );
    describe_gauge!(
        "emostream_source_paused",
        "1 while the input partitions are paused at the in-flight limits (backpressure)"
    );
    describe_counter!(
        "emostream_source_pauses_total",
        "Times the input partitions were paused at the in-flight limits"
    );
    describe_gauge!(
        "emostream_model_info",
        "The active model (labels name, version)"
    );
    describe_counter!(
        "emostream_labels_total",
        "Delivered label events carrying each label (emotions over time)"
    );
    describe_gauge!(
        "emostream_build_info",
        "The running build: crate version and git commit (1)"
    );
    describe_gauge!(
        "emostream_execution_provider",
        "The ONNX Runtime execution provider the active model runs on (1)"
    );
    describe_gauge!(
        "emostream_stalled_partitions",
        "Partitions whose oldest message could be delivered nowhere"
    );
}
