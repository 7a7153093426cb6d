//! What a reconciler did: the changes it made and every failure it met. A pass goes on
//! past a failure, so failures are collected (as netavark's `NetavarkErrorList` does),
//! never returned one at a time.

use std::fmt;

use serde::Serialize;

/// One failure: what could not be done, and why. `what` names the thing (an FDB
/// entry, a container, a file) and stays the same while the failure lasts, so a
/// failure is logged when it starts, when its reason changes and when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Failure {
    pub what: String,
    pub why: String,
}

impl Failure {
    pub fn new(what: impl Into<String>, why: impl fmt::Display) -> Self {
        Self {
            what: what.into(),
            why: why.to_string(),
        }
    }

    /// A failure of the whole step (no one thing to name), from an error (with its
    /// chain, for anyhow's).
    pub fn of(error: &(impl fmt::Display + ?Sized)) -> Self {
        Self::new("", format!("{error:#}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.what.as_str() {
            "" => write!(f, "{}", self.why),
            what => write!(f, "{what}: {}", self.why),
        }
    }
}

/// Every failure of a step, in the order met.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ErrorList(Vec<Failure>);

impl ErrorList {
    pub fn push(&mut self, failure: Failure) {
        self.0.push(failure);
    }

    /// Records a failed step: `what` names it, the error chain says why.
    pub fn add(&mut self, what: impl Into<String>, error: &(impl fmt::Display + ?Sized)) {
        self.push(Failure::new(what, format!("{error:#}")));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Failure> {
        self.0.iter()
    }

    pub fn extend(&mut self, other: ErrorList) {
        self.0.extend(other.0);
    }
}

impl IntoIterator for ErrorList {
    type Item = Failure;
    type IntoIter = std::vec::IntoIter<Failure>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ErrorList {
    type Item = &'a Failure;
    type IntoIter = std::slice::Iter<'a, Failure>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<Failure> for ErrorList {
    fn from_iter<I: IntoIterator<Item = Failure>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for ErrorList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ErrorList {}

/// A service a step restarted: whatever was read from it before is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restarted {
    Docker,
    Consul,
}

/// What one step (a reconciler, or a part of one) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub changes: Vec<String>,
    pub errors: ErrorList,
    #[serde(skip)]
    pub restarted: Option<Restarted>,
}

impl Outcome {
    pub fn change(&mut self, line: impl Into<String>) {
        self.changes.push(line.into());
    }

    pub fn fail(&mut self, what: impl Into<String>, why: impl fmt::Display) {
        self.errors.push(Failure::new(what, why));
    }

    /// A failed step with nothing more specific to name than the step.
    pub fn fail_with(&mut self, error: &(impl fmt::Display + ?Sized)) {
        self.errors.push(Failure::of(error));
    }

    pub fn merge(&mut self, other: Outcome) {
        self.changes.extend(other.changes);
        self.errors.extend(other.errors);
        self.restarted = self.restarted.or(other.restarted);
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Logs passes' outcomes: each change, and each failure when it starts, when its
/// reason changes and when it ends, not on every pass while it lasts.
#[derive(Debug, Default)]
pub struct FailureLog {
    last: Vec<Failure>,
}

impl FailureLog {
    /// Takes `outcome` as the last one seen without logging it (another log did), so
    /// that the next logged pass says what started and ended since.
    pub fn note(&mut self, outcome: &Outcome) {
        self.last = outcome.errors.iter().cloned().collect();
    }

    pub fn log(&mut self, outcome: &Outcome) {
        for c in &outcome.changes {
            tracing::info!("{c}");
        }
        let (started, ended) = transitions(&self.last, &outcome.errors);
        for e in started {
            tracing::error!("{e}");
        }
        for e in ended {
            tracing::info!("no longer failing: {e}");
        }
        self.last = outcome.errors.iter().cloned().collect();
    }
}

/// Failures that started (or changed their reason) since the last pass, and those that
/// ended: gone, and not replaced by a new failure of the same thing. Several failures
/// may share one `what` (a step's diagnostics).
fn transitions<'a>(
    last: &'a [Failure],
    now: &'a ErrorList,
) -> (Vec<&'a Failure>, Vec<&'a Failure>) {
    let started: Vec<&Failure> = now.iter().filter(|e| !last.contains(e)).collect();
    let ended = last
        .iter()
        .filter(|e| !now.iter().any(|n| n == *e) && !started.iter().any(|n| n.what == e.what))
        .collect();
    (started, ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_as_what_then_why_and_lists_join_them() {
        let mut o = Outcome::default();
        o.fail("add fdb 02:61:72:70:00:02", "File exists");
        o.fail_with(&anyhow::anyhow!("no underlay").context("observe"));
        assert_eq!(
            o.errors.to_string(),
            "add fdb 02:61:72:70:00:02: File exists; observe: no underlay"
        );
        assert_eq!(o.errors.len(), 2);
        assert!(!o.is_ok());
    }

    #[test]
    fn merging_keeps_every_change_and_failure_in_order() {
        let mut a = Outcome::default();
        a.change("one");
        a.fail("x", "1");
        let mut b = Outcome::default();
        b.change("two");
        b.fail("y", "2");
        a.merge(b);
        assert_eq!(a.changes, ["one", "two"]);
        let whats: Vec<_> = a.errors.iter().map(|f| f.what.as_str()).collect();
        assert_eq!(whats, ["x", "y"]);
    }

    #[test]
    fn a_failure_is_logged_when_it_starts_changes_and_ends() {
        let f = |what: &str, why: &str| Failure::new(what, why);
        let last = vec![
            f("containers", "a.toml: bad"),
            f("containers", "b.toml: bad"),
        ];
        // a.toml fixed: it ended, though b.toml still fails under the same name.
        let now: ErrorList = [f("containers", "b.toml: bad")].into_iter().collect();
        let (started, ended) = transitions(&last, &now);
        assert!(started.is_empty());
        assert_eq!(ended, [&last[0]]);
        // A new reason for the same thing is a start, not an end.
        let last = vec![f("network: add fdb x", "EEXIST")];
        let now: ErrorList = [f("network: add fdb x", "ENODEV")].into_iter().collect();
        let (started, ended) = transitions(&last, &now);
        assert_eq!(started.len(), 1);
        assert!(ended.is_empty());
        // Fixed: it ended.
        let none = ErrorList::default();
        let (started, ended) = transitions(&last, &none);
        assert!(started.is_empty());
        assert_eq!(ended.len(), 1);
    }
}
