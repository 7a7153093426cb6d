//! arpanetd's Prometheus metrics: one process-wide registry any module records into,
//! served as text at `GET /metrics` by the cluster API ([`crate::api`]).
//!
//! Every series is this node's own (its peers, its passes, its share of each service):
//! a cluster's totals are Prometheus sums over the nodes, never counted twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Prometheus' text format (0.0.4), which `promtool check metrics` and every scraper read.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The states of a rollout, as `arpanet_service_rollout{state}` has them.
pub const ROLLOUT_STATES: [&str; 5] = [
    "updating",
    "rolling_back",
    "paused",
    "completed",
    "rolled_back",
];

/// Which pass a step ran in: the main pass, or the network task's own
/// ([`crate::pass::network`]), whose steps also run inside the main pass's `network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Main,
    Network,
}

impl Pass {
    pub fn as_str(self) -> &'static str {
        match self {
            Pass::Main => "main",
            Pass::Network => "network",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    pass: &'static str,
    step: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

type StepHistograms = Family<StepLabels, Histogram, fn() -> Histogram>;

fn step_histogram() -> Histogram {
    // 1 ms to about a minute: a netlink dump to a Docker restart or a pull.
    Histogram::new(exponential_buckets(0.001, 4.0, 9))
}

struct Metrics {
    registry: Registry,
    peers: Family<StateLabel, Gauge>,
    step_duration: StepHistograms,
    step_errors: Family<StepLabels, Counter>,
    instances: Family<ServiceLabels, Gauge>,
    /// The services `instances` has series for, so that a removed one's go.
    services: Mutex<BTreeSet<String>>,
    rollout: Family<ServiceLabels, Gauge>,
    /// The services `rollout` has series for.
    rolled: Mutex<BTreeSet<String>>,
    transfer: Family<DirectionLabel, Counter>,
    registry_blobs: Family<DirectionLabel, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let peers = Family::<StateLabel, Gauge>::default();
        registry.register(
            "arpanet_peers",
            "Peers this node's overlay knows, by state (as `arpanet status` shows them)",
            peers.clone(),
        );
        let step_duration = StepHistograms::new_with_constructor(step_histogram);
        registry.register(
            "arpanet_pass_step_duration_seconds",
            "How long each step of a reconcile pass took, by pass and step",
            step_duration.clone(),
        );
        let step_errors = Family::<StepLabels, Counter>::default();
        registry.register(
            "arpanet_pass_step_errors",
            "Runs of a reconcile pass step that reported a failure, by pass and step",
            step_errors.clone(),
        );
        let instances = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "arpanet_service_instances",
            "Instances of each cluster service on this node: placed here (desired) and running",
            instances.clone(),
        );
        let rollout = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "arpanet_service_rollout",
            "A cluster service's rollout: 1 for its current state, 0 for the others",
            rollout.clone(),
        );
        let transfer = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "arpanet_image_transfer_bytes",
            "Image bytes this node's image sync service sent to and received from peers",
            transfer.clone(),
        );
        let registry_blobs = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "arpanet_registry_blob_bytes",
            "Blob bytes this node's registry sent to other nodes and fetched from them",
            registry_blobs.clone(),
        );
        // Zero rather than absent before the first transfer, so rates start at once.
        for direction in ["sent", "received"] {
            let _ = transfer.get_or_create(&DirectionLabel { direction });
            let _ = registry_blobs.get_or_create(&DirectionLabel { direction });
        }
        Self {
            registry,
            peers,
            step_duration,
            step_errors,
            instances,
            services: Mutex::default(),
            rollout,
            rolled: Mutex::default(),
            transfer,
            registry_blobs,
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Every metric, in Prometheus' text format ([`CONTENT_TYPE`]).
pub fn encode() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    prometheus_client::encoding::text::encode_registry(&mut text, &METRICS.registry)
        .expect("encode metrics into a string");
    prometheus_text(&text)
}

/// The crate writes OpenMetrics, where a counter family `x` has samples `x_total`. In
/// Prometheus' text format a family is named as its samples are, so a parser there
/// would see an empty family `x` and an untyped `x_total` with no help.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?.split_once(' ')?)));
        match meta {
            Some((prefix, (name, tail))) if counters.contains(name) => {
                out.push_str(&format!("{prefix}{name}_total {tail}"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Peers by state, replacing the last count (a state no peer is in reads 0).
pub fn peers(by_state: &BTreeMap<&str, usize>) {
    for (state, n) in by_state {
        METRICS
            .peers
            .get_or_create(&StateLabel {
                state: state.to_string(),
            })
            .set(*n as i64);
    }
}

/// One run of a pass step: how long it took, and whether it reported a failure.
pub fn step(pass: Pass, step: &str, took: Duration, failed: bool) {
    let labels = StepLabels {
        pass: pass.as_str(),
        step: step.to_string(),
    };
    METRICS
        .step_duration
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
    let errors = METRICS.step_errors.get_or_create(&labels);
    if failed {
        errors.inc();
    }
}

/// Instances of each cluster service on this node, `(desired, running)` by service:
/// the whole set, so services that are gone lose their series.
pub fn service_instances(counts: &BTreeMap<String, (u32, u32)>) {
    let mut known = METRICS.services.lock().expect("metrics services");
    for (service, (desired, running)) in counts {
        for (state, n) in [("desired", desired), ("running", running)] {
            METRICS
                .instances
                .get_or_create(&ServiceLabels {
                    service: service.clone(),
                    state,
                })
                .set(i64::from(*n));
        }
    }
    for gone in known.iter().filter(|s| !counts.contains_key(*s)) {
        for state in ["desired", "running"] {
            METRICS.instances.remove(&ServiceLabels {
                service: gone.clone(),
                state,
            });
        }
    }
    *known = counts.keys().cloned().collect();
}

/// A service's rollout is now in `state`, one of [`ROLLOUT_STATES`]. Another state is
/// a caller's mistake: it is logged and nothing changes.
pub fn rollout_state(service: &str, state: &str) {
    if !ROLLOUT_STATES.contains(&state) {
        tracing::warn!(
            "metrics: rollout state `{state}` of {service} is not one of {ROLLOUT_STATES:?}"
        );
        return;
    }
    for s in ROLLOUT_STATES {
        METRICS
            .rollout
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
                state: s,
            })
            .set(i64::from(s == state));
    }
}

/// Every updated service's rollout state, from the cluster state a pass read: the
/// whole set, so a service that is gone loses its series.
pub fn rollouts(states: &BTreeMap<String, &str>) {
    let mut known = METRICS.rolled.lock().expect("metrics rollouts");
    for (service, state) in states {
        rollout_state(service, state);
    }
    for gone in known.iter().filter(|s| !states.contains_key(*s)) {
        forget_rollout(gone);
    }
    *known = states.keys().cloned().collect();
}

/// Drops a service's rollout series (the service is gone).
pub fn forget_rollout(service: &str) {
    for state in ROLLOUT_STATES {
        METRICS.rollout.remove(&ServiceLabels {
            service: service.to_string(),
            state,
        });
    }
}

/// Blob bytes the node registry sent to another node (`sent`) or fetched (`received`).
pub fn registry_blob_bytes(direction: &'static str, n: u64) {
    METRICS
        .registry_blobs
        .get_or_create(&DirectionLabel { direction })
        .inc_by(n);
}

/// The image sync service's byte totals, as it last wrote them. Counters only go up:
/// a total below what was recorded (its file was removed) adds nothing.
pub fn image_transfer(sent: u64, received: u64) {
    for (direction, total) in [("sent", sent), ("received", received)] {
        let counter = METRICS
            .transfer
            .get_or_create(&DirectionLabel { direction });
        let have = counter.get();
        if total > have {
            counter.inc_by(total - have);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of the exposition that start with `prefix`.
    fn lines(prefix: &str) -> Vec<String> {
        encode()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn counter_families_are_named_as_their_samples() {
        let om = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\na_bytes_total{d=\"x\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            prometheus_text(om),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{d=\"x\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn rollout_states_are_one_hot_and_forgotten() {
        rollout_state("t-rollout", "updating");
        rollout_state("t-rollout", "paused");
        let series = lines("arpanet_service_rollout{service=\"t-rollout\"");
        assert_eq!(series.len(), 5, "{series:?}");
        assert!(series.contains(
            &"arpanet_service_rollout{service=\"t-rollout\",state=\"paused\"} 1".to_string()
        ));
        assert!(series.contains(
            &"arpanet_service_rollout{service=\"t-rollout\",state=\"updating\"} 0".to_string()
        ));
        // Not a state: nothing changes.
        rollout_state("t-rollout", "exploded");
        assert_eq!(
            lines("arpanet_service_rollout{service=\"t-rollout\"").len(),
            5
        );
        forget_rollout("t-rollout");
        assert!(lines("arpanet_service_rollout{service=\"t-rollout\"").is_empty());
    }

    #[test]
    fn service_instances_replace_the_last_set() {
        let mut counts = BTreeMap::new();
        counts.insert("t-a".to_string(), (2, 1));
        counts.insert("t-b".to_string(), (0, 0));
        service_instances(&counts);
        // Series come in no fixed order.
        let mut a = lines("arpanet_service_instances{service=\"t-a\"");
        a.sort();
        assert_eq!(
            a,
            [
                "arpanet_service_instances{service=\"t-a\",state=\"desired\"} 2",
                "arpanet_service_instances{service=\"t-a\",state=\"running\"} 1"
            ]
        );
        assert_eq!(lines("arpanet_service_instances{service=\"t-b\"").len(), 2);
        counts.remove("t-b");
        service_instances(&counts);
        assert!(lines("arpanet_service_instances{service=\"t-b\"").is_empty());
        assert_eq!(lines("arpanet_service_instances{service=\"t-a\"").len(), 2);
    }

    #[test]
    fn steps_count_time_and_failures_and_transfers_only_go_up() {
        step(Pass::Network, "t-step", Duration::from_millis(3), false);
        step(Pass::Network, "t-step", Duration::from_millis(5), true);
        assert_eq!(
            lines("arpanet_pass_step_duration_seconds_count{pass=\"network\",step=\"t-step\"}"),
            ["arpanet_pass_step_duration_seconds_count{pass=\"network\",step=\"t-step\"} 2"]
        );
        assert_eq!(
            lines("arpanet_pass_step_errors_total{pass=\"network\",step=\"t-step\"}"),
            ["arpanet_pass_step_errors_total{pass=\"network\",step=\"t-step\"} 1"]
        );
        image_transfer(100, 7);
        image_transfer(50, 9);
        assert_eq!(
            lines("arpanet_image_transfer_bytes_total{direction=\"sent\"}"),
            ["arpanet_image_transfer_bytes_total{direction=\"sent\"} 100"]
        );
        assert_eq!(
            lines("arpanet_image_transfer_bytes_total{direction=\"received\"}"),
            ["arpanet_image_transfer_bytes_total{direction=\"received\"} 9"]
        );
    }
}
