//! Following a Consul endpoint with blocking queries, by the rules of Consul's docs
//! ("Blocking Queries"): an index that goes backwards is reset to 0, one below 1 is
//! taken as 1, an answer that comes back at once with the same index is not asked
//! again at once, and errors are retried with backoff. Consul itself adds up to
//! wait/16 of jitter to each wait, so many nodes watching do not answer in step.
//!
//! Every watch in arpanet goes through [`BlockingQuery`].

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use super::client::ConsulError;

/// An answer that comes back sooner than this with an index that did not move is
/// not a change; the next query waits this long first (Consul's docs: no hot loop).
pub const NO_PROGRESS_PAUSE: Duration = Duration::from_secs(1);

/// Pauses between failed queries: 1 s doubling to 3 s, each with up to as much again
/// of jitter (the old fixed pause was 2 s; an agent that comes back is followed soon).
fn error_backoff() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(3))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// One endpoint followed over time: call [`BlockingQuery::next`] in a loop.
pub struct BlockingQuery {
    wait: Duration,
    /// What the next query passes; `None` asks without blocking (the first query,
    /// and the one after an error, so a caller sees the state at once).
    index: Option<u64>,
    /// The index of the last answer, kept across errors, to tell a change.
    last: Option<u64>,
    /// While queries fail: the pauses between them.
    errors: Option<ExponentialBackoff>,
    /// Slept before the next query.
    pause: Option<Duration>,
    no_progress_pause: Duration,
    error_backoff: ExponentialBuilder,
}

/// A successful answer.
#[derive(Debug)]
pub struct Answer<T> {
    pub value: T,
    /// The index moved since the previous answer (false for the first one).
    pub changed: bool,
}

/// The index to pass next, from the one passed and the one answered.
fn next_index(sent: Option<u64>, answered: u64) -> u64 {
    if answered < 1 {
        1
    } else if sent.is_some_and(|s| answered < s) {
        // Consul's state was reset (a snapshot restore, a new cluster): start over.
        0
    } else {
        answered
    }
}

/// Whether to pause before the next query: the answer came back early (well before
/// `wait`) with the same index as was passed, which would otherwise loop hot.
fn no_progress(sent: Option<u64>, answered: u64, took: Duration, wait: Duration) -> bool {
    sent.is_some_and(|s| s > 0 && s == answered) && took < wait / 2
}

impl BlockingQuery {
    /// `wait` is how long each query blocks on Consul's side (at least 1 s).
    pub fn new(wait: Duration) -> Self {
        Self {
            wait,
            index: None,
            last: None,
            errors: None,
            pause: None,
            no_progress_pause: NO_PROGRESS_PAUSE,
            error_backoff: error_backoff(),
        }
    }

    /// Runs the next query. `query(index, wait)` is one call of a blocking endpoint
    /// (such as `Consul::healthy_instances`) returning its value and X-Consul-Index.
    /// After an error, the next call first sleeps the backoff.
    pub async fn next<T, F, Fut>(&mut self, query: F) -> Result<Answer<T>, ConsulError>
    where
        F: FnOnce(Option<u64>, Duration) -> Fut,
        Fut: Future<Output = Result<(T, u64), ConsulError>>,
    {
        if let Some(pause) = self.pause.take() {
            tokio::time::sleep(pause).await;
        }
        let started = tokio::time::Instant::now();
        match query(self.index, self.wait).await {
            Ok((value, answered)) => {
                self.errors = None;
                self.pause = no_progress(self.index, answered, started.elapsed(), self.wait)
                    .then_some(self.no_progress_pause);
                let changed = self.last.is_some_and(|l| l != answered);
                self.last = Some(answered);
                self.index = Some(next_index(self.index, answered));
                Ok(Answer { value, changed })
            }
            Err(e) => {
                self.index = None;
                self.pause = self
                    .errors
                    .get_or_insert_with(|| self.error_backoff.build())
                    .next();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_follows_consuls_rules() {
        // First answer, and one that moved on.
        assert_eq!(next_index(None, 42), 42);
        assert_eq!(next_index(Some(42), 57), 57);
        assert_eq!(next_index(Some(42), 42), 42);
        // Backwards: start over with a query that does not block.
        assert_eq!(next_index(Some(42), 7), 0);
        // Below 1 is never passed on, so a query always blocks.
        assert_eq!(next_index(None, 0), 1);
        assert_eq!(next_index(Some(42), 0), 1);
        assert_eq!(next_index(Some(0), 0), 1);
        // After a reset to 0, any index is taken.
        assert_eq!(next_index(Some(0), 3), 3);
    }

    #[test]
    fn an_early_answer_without_progress_pauses() {
        let wait = Duration::from_secs(30);
        let quick = Duration::from_millis(5);
        // The same index back at once: the hot loop the docs warn of.
        assert!(no_progress(Some(9), 9, quick, wait));
        // The wait ran out with nothing new: ask again at once.
        assert!(!no_progress(Some(9), 9, wait, wait));
        // A change, the first query, and the query after a reset do not block anyway.
        assert!(!no_progress(Some(9), 10, quick, wait));
        assert!(!no_progress(None, 9, quick, wait));
        assert!(!no_progress(Some(0), 9, quick, wait));
    }

    #[tokio::test]
    async fn errors_back_off_and_reset_the_index_and_changes_are_told() {
        let ms = Duration::from_millis;
        let mut q = BlockingQuery {
            no_progress_pause: ms(40),
            error_backoff: error_backoff()
                .with_min_delay(ms(50))
                .with_max_delay(ms(400)),
            ..BlockingQuery::new(Duration::from_secs(30))
        };
        let sent = std::cell::RefCell::new(Vec::new());
        let answer = |index: u64| {
            let sent = &sent;
            move |i: Option<u64>, _wait: Duration| {
                sent.borrow_mut().push(i);
                async move { Ok::<_, ConsulError>(((), index)) }
            }
        };
        let fail = |i: Option<u64>, _wait: Duration| {
            sent.borrow_mut().push(i);
            async {
                Err::<((), u64), _>(ConsulError::Timeout {
                    addr: "127.0.0.1:8500".parse().unwrap(),
                })
            }
        };
        assert!(!q.next(answer(5)).await.unwrap().changed);
        assert!(!q.next(answer(5)).await.unwrap().changed);
        let before = tokio::time::Instant::now();
        assert!(q.next(fail).await.is_err());
        assert!(q.next(fail).await.is_err());
        // The no-progress pause, then a backoff pause (50 ms, up to 100 with jitter).
        let waited = before.elapsed();
        assert!(waited >= ms(90), "{waited:?}");
        // A change made while failing is still told.
        assert!(q.next(answer(8)).await.unwrap().changed);
        assert!(!q.next(answer(8)).await.unwrap().changed);
        assert_eq!(
            *sent.borrow(),
            [None, Some(5), Some(5), None, None, Some(8)],
            "errors drop the index, so the next query reads at once"
        );
    }
}
