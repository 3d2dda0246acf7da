//! `emostream create-topics`: creates every topic a configuration names that does not exist
//! yet — input, output, dead-letter (sized for the largest dead letter the daemon makes),
//! control and feedback — so an operator starts from topics that match the configuration.

use crate::daemon::config::Settings;
use crate::daemon::kafka::client::{client_config, ClientSettings};
use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// What to create; -1 leaves a count to the broker's defaults (`num.partitions`,
/// `default.replication.factor`).
#[derive(Debug, Clone, Copy)]
pub struct TopicLayout {
    pub partitions: i32,
    pub replication_factor: i32,
}

/// One topic the configuration names, how it is to be made, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOutcome {
    pub topic: String,
    /// The configuration key that names it.
    pub key: &'static str,
    /// "created" or "exists".
    pub result: &'static str,
}

/// The topics `s` names, with their partitions and topic configs.
fn planned(
    s: &Settings,
    layout: TopicLayout,
) -> Vec<(String, &'static str, i32, Vec<(&'static str, String)>)> {
    let n = layout.partitions;
    let mut out: Vec<_> = s
        .kafka
        .input_topics
        .iter()
        .map(|t| (t.clone(), "kafka.input_topics", n, vec![]))
        .collect();
    out.push((
        s.kafka.output_topic.clone(),
        "kafka.output_topic",
        n,
        vec![],
    ));
    // Room for the largest dead letter: a smaller limit makes the daemon cut dead letters.
    let dlq = vec![(
        "max.message.bytes",
        s.dead_letter_record_bytes().to_string(),
    )];
    out.push((
        s.kafka.dead_letter_topic.clone(),
        "kafka.dead_letter_topic",
        n,
        dlq,
    ));
    if !s.registry.control_topic.is_empty() {
        // One partition: the announcements are read in order by every replica.
        out.push((
            s.registry.control_topic.clone(),
            "registry.control_topic",
            1,
            vec![],
        ));
    }
    if !s.api.feedback_topic.is_empty() {
        out.push((
            s.api.feedback_topic.clone(),
            "api.feedback_topic",
            n,
            vec![],
        ));
    }
    out
}

/// Creates the topics `s` names that do not exist; a topic that exists is left as it is.
pub async fn create_topics(s: &Settings, layout: TopicLayout) -> Result<Vec<TopicOutcome>> {
    let admin: AdminClient<DefaultClientContext> = client_config(&ClientSettings::from_settings(s))
        .create()
        .context("creating the Kafka admin client")?;
    let plan = planned(s, layout);
    let new: Vec<NewTopic<'_>> = plan
        .iter()
        .map(|(t, _, partitions, configs)| {
            configs.iter().fold(
                NewTopic::new(
                    t,
                    *partitions,
                    TopicReplication::Fixed(layout.replication_factor),
                ),
                |nt, (k, v)| nt.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .with_context(|| format!("creating topics on {}", s.kafka.brokers))?;
    let mut out = Vec::new();
    for ((topic, key, _, _), r) in plan.iter().zip(results) {
        let result = match r {
            Ok(_) => "created",
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => "exists",
            Err((_, e)) => bail!("creating topic {topic} (config key {key}): {e}"),
        };
        out.push(TopicOutcome {
            topic: topic.clone(),
            key,
            result,
        });
    }
    Ok(out)
}
