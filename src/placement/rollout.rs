//! Rolling updates, as pure decisions over the service record and what Consul shows of
//! its instances. The record (`arpanet/cluster/services/NAME`) holds the rollout's
//! progress and is only ever advanced by a compare-and-set write, so any node may take
//! the next step and two that try at once cannot both succeed: there is no driver to
//! lose, only the next node to look (see [`super::driver`]).
//!
//! After Swarm's `update_config`: batches of `parallel` instances, `delay` between
//! batches, `monitor` to watch each new instance, and on a failure a pause (Swarm's
//! default) or a rollback that puts the previous spec back the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::ServiceDef;
use crate::addressing::NodeAddress;
use crate::config::containers::ContainerSpec;

/// How long a batch's new instance may take to show up in Consul at all (an image
/// pull, a slow start) before the update counts as failed.
pub const START_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    Pause,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    StopFirst,
    StartFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateConfig {
    /// Instances replaced at once, across the cluster.
    pub parallel: u32,
    /// Pause between one batch's end and the next's start.
    pub delay: Duration,
    /// How long a new instance is watched: one without a check must run this long, one
    /// with a check must pass within this (plus one check interval).
    pub monitor: Duration,
    pub failure_action: FailureAction,
    pub order: Order,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            parallel: 1,
            delay: Duration::ZERO,
            monitor: Duration::from_secs(5),
            failure_action: FailureAction::Pause,
            order: Order::StopFirst,
        }
    }
}

/// The spec before the last update (or rollback), which a rollback puts back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Previous {
    pub version: u64,
    pub spec: ContainerSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    Updating,
    RollingBack,
    /// Stopped by a failure, with the service split between two versions.
    Paused,
    Completed,
    RolledBack,
}

impl RolloutState {
    /// Some instances still run the previous spec.
    pub fn splits(self) -> bool {
        matches!(self, Self::Updating | Self::RollingBack | Self::Paused)
    }

    /// A driver has steps to take.
    pub fn active(self) -> bool {
        matches!(self, Self::Updating | Self::RollingBack)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Updating => "updating",
            Self::RollingBack => "rolling_back",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
        }
    }

    pub const ALL: [Self; 5] = [
        Self::Updating,
        Self::RollingBack,
        Self::Paused,
        Self::Completed,
        Self::RolledBack,
    ];
}

/// The progress of the last update or rollback. Times are Unix milliseconds, written
/// by whichever node took the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub state: RolloutState,
    /// Instances on the current spec (the batch's included). Every other instance runs
    /// the previous one until a batch takes it, an instance placed during the rollout
    /// too: nothing switches outside a batch.
    pub updated: BTreeSet<String>,
    /// The instances being replaced now.
    pub batch: BTreeSet<String>,
    pub batch_started: u64,
    /// When each of the batch's instances was first seen on its new version.
    pub seen: BTreeMap<String, u64>,
    /// The batch's instances seen passing their check.
    pub passed: BTreeSet<String>,
    /// When the last batch ended, for `delay`.
    pub batch_ended: u64,
    pub started: u64,
    /// When it completed, rolled back or paused.
    pub ended: Option<u64>,
    /// Why it paused or rolled back.
    pub message: Option<String>,
    /// The node that took the last step.
    pub driver: Option<NodeAddress>,
    /// A rollback (`current` is the spec put back), also once it paused.
    pub back: bool,
}

impl Rollout {
    pub fn new(state: RolloutState, updated: BTreeSet<String>, now: u64) -> Self {
        Self {
            state,
            updated,
            batch: BTreeSet::new(),
            batch_started: 0,
            seen: BTreeMap::new(),
            passed: BTreeSet::new(),
            batch_ended: 0,
            started: now,
            ended: None,
            message: None,
            driver: None,
            back: state == RolloutState::RollingBack,
        }
    }
}

/// What Consul shows of one instance: the version it runs (its registration's
/// `version` meta) and whether all its checks pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub version: u64,
    pub passing: bool,
}

/// The service record after `service update`: `spec` becomes the next version and
/// rolls out over every instance, in batches. The caller refuses an update while a
/// rollout is active or paused (a paused service is split between two specs; the
/// rollback sorts it out first).
pub fn start_update(
    def: &ServiceDef,
    spec: ContainerSpec,
    update: UpdateConfig,
    now: u64,
) -> ServiceDef {
    let mut next = def.clone();
    let newest = def
        .version
        .max(def.previous.as_ref().map_or(0, |p| p.version));
    next.previous = Some(Previous {
        version: def.version,
        spec: def.spec.clone(),
    });
    next.spec = spec;
    next.version = newest + 1;
    next.update = update;
    next.rollout = Some(Rollout::new(RolloutState::Updating, BTreeSet::new(), now));
    next
}

/// The record with the previous spec going back, in batches, to the instances that run
/// the current one; a paused rollback resumes instead (swapping again would roll
/// forward to the spec that failed).
pub fn start_rollback(
    def: &ServiceDef,
    placed: &[String],
    now: u64,
    why: Option<String>,
) -> Option<ServiceDef> {
    if let Some(r) = &def.rollout
        && r.back
        && r.state == RolloutState::Paused
    {
        let mut next = def.clone();
        let r = next.rollout.as_mut().expect("checked");
        r.state = RolloutState::RollingBack;
        r.ended = None;
        r.message = why;
        return Some(next);
    }
    let previous = def.previous.clone()?;
    // Instances the last update has not reached run the spec going back already.
    let on_previous: BTreeSet<String> = match &def.rollout {
        Some(r) if r.state.splits() => placed
            .iter()
            .filter(|i| !r.updated.contains(*i))
            .cloned()
            .collect(),
        _ => BTreeSet::new(),
    };
    let mut next = def.clone();
    next.previous = Some(Previous {
        version: def.version,
        spec: def.spec.clone(),
    });
    next.spec = previous.spec;
    next.version = previous.version;
    let mut rollout = Rollout::new(RolloutState::RollingBack, on_previous, now);
    rollout.message = why;
    next.rollout = Some(rollout);
    Some(next)
}

/// What a driver knows when it looks: every instance now placed, and Consul's view.
pub struct Observation<'a> {
    pub placed: &'a [String],
    pub health: &'a BTreeMap<String, Health>,
    /// The spec's check interval, when it has a check.
    pub check_interval: Option<Duration>,
    pub now: u64,
    pub me: NodeAddress,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1)))
}

/// The next step of an active rollout: the record to write, or None while there is
/// nothing to record yet.
///
/// A batch instance is done once it has run its new version for `monitor` (and, with
/// a check, passes it); it fails if it stops within that window, has not passed within
/// `monitor` plus one check interval (counted again from a check it stops passing, as
/// Nomad's min_healthy_time restarts), or has not started within [`START_DEADLINE`].
pub fn step(def: &ServiceDef, o: &Observation) -> Option<ServiceDef> {
    let r = def.rollout.as_ref().filter(|r| r.state.active())?;
    let mut next = def.clone();
    let nr = next.rollout.as_mut().expect("checked above");
    nr.driver = Some(o.me);
    let placed: BTreeSet<&String> = o.placed.iter().collect();

    if !r.batch.is_empty() {
        let monitor = ms(def.update.monitor);
        let mut changed = false;
        let mut ready = true;
        let mut failure = None;
        for i in r.batch.iter().filter(|i| placed.contains(i)) {
            let on_target = o.health.get(i).filter(|h| h.version == def.version);
            match (on_target, nr.seen.get(i).copied()) {
                (None, None) => {
                    ready = false;
                    if o.now.saturating_sub(r.batch_started) > ms(START_DEADLINE) {
                        failure = Some(format!(
                            "{i} did not start within {}",
                            human(START_DEADLINE)
                        ));
                    }
                }
                (None, Some(_)) => {
                    failure = Some(format!("{i} stopped within the monitor window"));
                }
                (Some(h), first) => {
                    let first = first.unwrap_or_else(|| {
                        nr.seen.insert(i.clone(), o.now);
                        changed = true;
                        o.now
                    });
                    let age = o.now.saturating_sub(first);
                    if age < monitor {
                        ready = false;
                    }
                    match o.check_interval {
                        Some(_) if h.passing => {
                            changed |= nr.passed.insert(i.clone());
                        }
                        Some(_) if nr.passed.contains(i) => {
                            // One missed check (a slow answer on a busy host) is no
                            // failure yet: its window starts again, and it fails if it
                            // does not pass again within it.
                            ready = false;
                            nr.passed.remove(i);
                            nr.seen.insert(i.clone(), o.now);
                            changed = true;
                        }
                        Some(interval) => {
                            ready = false;
                            let grace = def.update.monitor.saturating_add(interval);
                            if age > ms(grace) {
                                failure = Some(format!(
                                    "{i} did not pass its check within {}",
                                    human(grace)
                                ));
                            }
                        }
                        None => {}
                    }
                }
            }
        }
        if let Some(why) = failure {
            return Some(fail(def, next, why, o));
        }
        if ready {
            nr.batch.clear();
            nr.seen.clear();
            nr.passed.clear();
            nr.batch_ended = o.now;
            changed = true;
        }
        return changed.then_some(next);
    }

    let pending: Vec<String> = o
        .placed
        .iter()
        .filter(|i| !r.updated.contains(*i))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if pending.is_empty() {
        nr.state = if r.back {
            RolloutState::RolledBack
        } else {
            RolloutState::Completed
        };
        nr.ended = Some(o.now);
        return Some(next);
    }
    if o.now < r.batch_ended.saturating_add(ms(def.update.delay)) {
        return None;
    }
    let batch: BTreeSet<String> = pending
        .into_iter()
        .take(def.update.parallel.max(1) as usize)
        .collect();
    nr.updated.extend(batch.iter().cloned());
    nr.batch = batch;
    nr.batch_started = o.now;
    Some(next)
}

/// A failed batch: an update rolls back when asked to, anything else pauses.
fn fail(def: &ServiceDef, mut next: ServiceDef, why: String, o: &Observation) -> ServiceDef {
    let back = def.rollout.as_ref().is_some_and(|r| r.back);
    if !back && def.update.failure_action == FailureAction::Rollback {
        let previous = def.previous.as_ref().map_or(0, |p| p.version);
        let why = format!(
            "version {} failed: {why}; rolling back to version {previous}",
            def.version
        );
        if let Some(mut rolled) = start_rollback(def, o.placed, o.now, Some(why)) {
            if let Some(r) = rolled.rollout.as_mut() {
                r.driver = Some(o.me);
            }
            return rolled;
        }
    }
    let nr = next.rollout.as_mut().expect("an active rollout");
    let what = if back { "rollback" } else { "update" };
    nr.state = RolloutState::Paused;
    nr.message = Some(format!("{what} to version {} paused: {why}", def.version));
    nr.ended = Some(o.now);
    // The failed batch keeps the new spec, as Swarm leaves a paused update's tasks.
    nr.batch.clear();
    nr.seen.clear();
    nr.passed.clear();
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{Constraints, ServiceName};

    fn spec(image: &str) -> ContainerSpec {
        toml::from_str(&format!("name = \"web\"\nimage = \"{image}\"\n")).unwrap()
    }

    fn names(n: u32) -> Vec<String> {
        (1..=n).map(|k| format!("web_0.{k}_1")).collect()
    }

    fn web() -> ServiceDef {
        ServiceDef::new(
            ServiceName::try_from("web".to_string()).unwrap(),
            spec("busybox:1"),
            4,
            Constraints::default(),
        )
    }

    fn update(parallel: u32, failure_action: FailureAction) -> UpdateConfig {
        UpdateConfig {
            parallel,
            failure_action,
            ..UpdateConfig::default()
        }
    }

    /// Runs steps at one-second intervals with `health` deciding each instance's
    /// health from the record; returns the record after `steps` seconds.
    fn run(
        mut def: ServiceDef,
        placed: &[String],
        checked: bool,
        seconds: u64,
        health: impl Fn(&ServiceDef, &str) -> Option<Health>,
        mut on_step: impl FnMut(&ServiceDef),
    ) -> ServiceDef {
        for t in 0..seconds {
            let h: BTreeMap<String, Health> = placed
                .iter()
                .filter_map(|i| health(&def, i).map(|h| (i.clone(), h)))
                .collect();
            let o = Observation {
                placed,
                health: &h,
                check_interval: checked.then_some(Duration::from_secs(1)),
                now: 1_000_000 + t * 1000,
                me: "0.1".parse().unwrap(),
            };
            if let Some(n) = step(&def, &o) {
                def = n;
                on_step(&def);
            }
        }
        def
    }

    #[test]
    fn a_healthy_update_goes_in_batches_and_completes() {
        let placed = names(4);
        let def = start_update(
            &web(),
            spec("busybox:2"),
            update(2, FailureAction::Pause),
            0,
        );
        assert_eq!(def.version, 2);
        assert_eq!(def.spec_for("web_0.1_1").0, 1, "not reached yet");
        let mut most_on_new_at_once = 0;
        let done = run(
            def,
            &placed,
            true,
            60,
            |d, i| {
                Some(Health {
                    version: d.spec_for(i).0,
                    passing: true,
                })
            },
            |d| {
                let r = d.rollout.as_ref().unwrap();
                most_on_new_at_once = most_on_new_at_once.max(r.batch.len());
            },
        );
        let r = done.rollout.as_ref().unwrap();
        assert_eq!(r.state, RolloutState::Completed, "{r:?}");
        assert_eq!(most_on_new_at_once, 2);
        assert!(placed.iter().all(|i| done.spec_for(i).0 == 2));
    }

    #[test]
    fn without_a_check_each_batch_runs_for_the_monitor_window() {
        let placed = names(2);
        let def = start_update(
            &web(),
            spec("busybox:2"),
            update(1, FailureAction::Pause),
            0,
        );
        let mut batch_ends = Vec::new();
        let done = run(
            def,
            &placed,
            false,
            30,
            |d, i| {
                Some(Health {
                    version: d.spec_for(i).0,
                    passing: true,
                })
            },
            |d| {
                let r = d.rollout.as_ref().unwrap();
                if r.batch.is_empty() && r.batch_ended > 0 {
                    batch_ends.push(r.batch_ended);
                }
            },
        );
        assert_eq!(done.rollout.unwrap().state, RolloutState::Completed);
        // The first batch starts at t=0, is seen at t=1 and runs its 5 s.
        assert_eq!(batch_ends[0], 1_000_000 + 6_000, "{batch_ends:?}");
    }

    #[test]
    fn a_failing_check_stops_after_the_first_batch_and_rolls_back() {
        let placed = names(4);
        let def = start_update(
            &web(),
            spec("busybox:2"),
            update(2, FailureAction::Rollback),
            0,
        );
        let mut ever_on_new = BTreeSet::new();
        let done = run(
            def,
            &placed,
            true,
            60,
            |d, i| {
                let (version, _) = d.spec_for(i);
                Some(Health {
                    version,
                    passing: version == 1,
                })
            },
            |d| {
                for i in &placed {
                    if d.spec_for(i).0 == 2 {
                        ever_on_new.insert(i.clone());
                    }
                }
            },
        );
        let r = done.rollout.as_ref().unwrap();
        assert_eq!(r.state, RolloutState::RolledBack, "{r:?}");
        assert_eq!(
            ever_on_new.len(),
            2,
            "only the first batch: {ever_on_new:?}"
        );
        assert_eq!(done.version, 1);
        assert_eq!(done.previous.as_ref().unwrap().version, 2);
        assert!(
            r.message
                .as_ref()
                .unwrap()
                .contains("did not pass its check"),
            "{r:?}"
        );
        assert!(placed.iter().all(|i| done.spec_for(i).0 == 1));
    }

    #[test]
    fn pause_is_the_default_and_keeps_the_rest_on_the_old_spec() {
        let placed = names(4);
        let def = start_update(&web(), spec("busybox:2"), UpdateConfig::default(), 0);
        let done = run(
            def,
            &placed,
            false,
            200,
            |d, i| {
                let (version, _) = d.spec_for(i);
                // The new version exits at once.
                (version == 1).then_some(Health {
                    version,
                    passing: true,
                })
            },
            |_| {},
        );
        let r = done.rollout.as_ref().unwrap();
        assert_eq!(r.state, RolloutState::Paused);
        assert!(
            r.message.as_ref().unwrap().contains("did not start"),
            "{r:?}"
        );
        let on_old = placed.iter().filter(|i| done.spec_for(i).0 == 1).count();
        assert_eq!(on_old, 3);
    }

    #[test]
    fn a_rollback_on_demand_puts_the_previous_spec_back_and_versions_stay_apart() {
        let placed = names(2);
        let v2 = start_update(&web(), spec("busybox:2"), UpdateConfig::default(), 0);
        let back = start_rollback(&v2, &placed, 0, None).unwrap();
        assert_eq!((back.version, back.spec.image.as_str()), (1, "busybox:1"));
        // v2 reached no instance yet: all of them run the spec going back already.
        assert_eq!(back.rollout.as_ref().unwrap().updated.len(), 2);
        let v3 = start_update(&back, spec("busybox:3"), UpdateConfig::default(), 0);
        assert_eq!(v3.version, 3, "a version number names one spec");
        assert!(start_rollback(&web(), &placed, 0, None).is_none());
    }

    fn passing_on(d: &ServiceDef, i: &str) -> Option<Health> {
        Some(Health {
            version: d.spec_for(i).0,
            passing: true,
        })
    }

    #[test]
    fn a_checked_batch_still_waits_out_the_monitor_window() {
        let placed = names(1);
        let def = start_update(&web(), spec("busybox:2"), UpdateConfig::default(), 0);
        let mut ended = 0;
        let done = run(def, &placed, true, 30, passing_on, |d| {
            ended = d.rollout.as_ref().unwrap().batch_ended.max(ended);
        });
        assert_eq!(done.rollout.unwrap().state, RolloutState::Completed);
        // Started at t=0, seen passing at t=1, done 5 s later.
        assert_eq!(ended, 1_000_000 + 6_000);
    }

    #[test]
    fn an_instance_that_passes_then_fails_within_the_window_stops_the_update() {
        let placed = names(2);
        let def = start_update(&web(), spec("busybox:2"), UpdateConfig::default(), 0);
        let look = |def: &ServiceDef, now: u64, passing: bool| {
            let h: BTreeMap<String, Health> = placed
                .iter()
                .map(|i| {
                    let (version, _) = def.spec_for(i);
                    let passing = version == 1 || passing;
                    (i.clone(), Health { version, passing })
                })
                .collect();
            step(
                def,
                &Observation {
                    placed: &placed,
                    health: &h,
                    check_interval: Some(Duration::from_secs(1)),
                    now,
                    me: "0.1".parse().unwrap(),
                },
            )
        };
        let started = look(&def, 1_000, true).unwrap();
        let passed = look(&started, 2_000, true).unwrap();
        assert!(
            look(&passed, 3_000, true).is_none(),
            "passing, in its window"
        );
        let flipped = look(&passed, 4_000, false).unwrap();
        assert_eq!(
            flipped.rollout.as_ref().unwrap().state,
            RolloutState::Updating,
            "one missed check restarts the window"
        );
        let again = look(&flipped, 6_000, true).expect("passing again");
        let flipped = look(&again, 7_000, false).expect("missed again: the window restarts");
        assert!(
            look(&flipped, 9_000, false).is_none(),
            "within monitor + interval"
        );
        let failed = look(&flipped, 14_000, false).unwrap();
        let r = failed.rollout.as_ref().unwrap();
        assert_eq!(r.state, RolloutState::Paused, "{r:?}");
        assert!(
            r.message
                .as_ref()
                .unwrap()
                .contains("did not pass its check"),
            "{r:?}"
        );
        assert_eq!(
            placed.iter().filter(|i| failed.spec_for(i).0 == 2).count(),
            1
        );
    }

    #[test]
    fn an_instance_placed_during_the_rollout_waits_for_a_batch() {
        let def = start_update(&web(), spec("busybox:2"), UpdateConfig::default(), 0);
        assert_eq!(
            def.spec_for("web_0.9_1").0,
            1,
            "a newcomer starts on the old spec"
        );
        let more = names(3);
        let done = run(def, &more, true, 60, passing_on, |_| {});
        assert_eq!(
            done.rollout.as_ref().unwrap().state,
            RolloutState::Completed
        );
        assert!(more.iter().all(|i| done.spec_for(i).0 == 2));
    }

    #[test]
    fn a_paused_rollback_resumes_rather_than_rolling_forward() {
        let placed = names(2);
        let v2 = start_update(&web(), spec("busybox:2"), UpdateConfig::default(), 0);
        let mut back = start_rollback(&v2, &placed, 0, None).unwrap();
        let r = back.rollout.as_mut().unwrap();
        r.updated.clear();
        r.state = RolloutState::Paused;
        let again = start_rollback(&back, &placed, 5, Some("asked".into())).unwrap();
        assert_eq!(again.version, 1, "still going back to version 1");
        assert_eq!(again.rollout.unwrap().state, RolloutState::RollingBack);
    }

    #[test]
    fn a_huge_monitor_does_not_overflow() {
        let placed = names(1);
        let config = UpdateConfig {
            monitor: Duration::MAX,
            ..UpdateConfig::default()
        };
        let def = start_update(&web(), spec("busybox:2"), config, 0);
        let h: BTreeMap<String, Health> = [(
            placed[0].clone(),
            Health {
                version: 2,
                passing: false,
            },
        )]
        .into();
        let o = Observation {
            placed: &placed,
            health: &h,
            check_interval: Some(Duration::from_secs(1)),
            now: 5_000,
            me: "0.1".parse().unwrap(),
        };
        let started = step(&def, &o).unwrap();
        let seen = step(&started, &o).unwrap();
        assert!(step(&seen, &Observation { now: u64::MAX, ..o }).is_none());
    }

    #[test]
    fn the_states_are_those_metrics_knows() {
        assert_eq!(
            RolloutState::ALL.map(RolloutState::as_str),
            crate::metrics::ROLLOUT_STATES
        );
    }

    #[test]
    fn a_stalled_step_writes_nothing() {
        let placed = names(1);
        let def = start_update(&web(), spec("busybox:2"), UpdateConfig::default(), 0);
        let h = BTreeMap::new();
        let o = |now| Observation {
            placed: &placed,
            health: &h,
            check_interval: None,
            now,
            me: "0.1".parse().unwrap(),
        };
        let started = step(&def, &o(1000)).unwrap();
        assert_eq!(started.rollout.as_ref().unwrap().batch.len(), 1);
        assert!(step(&started, &o(2000)).is_none(), "nothing seen yet");
    }
}
