//! Progress of long operations (save, load, verify, convert): a callback
//! that hears how many bytes are done out of how many in all.
//!
//! The contract every operation keeps, in every language:
//!
//! - the first call is `(0, total)`, before any byte is processed, so a
//!   caller can size its display;
//! - each later call has a larger `done` than the one before (never the
//!   same, never smaller), even when the work runs on several threads;
//! - the last call is `(total, total)`, made only when the operation
//!   succeeded; a failed operation stops calling wherever it failed;
//! - `total` is the same in every call of one operation;
//! - calls come from the thread that runs the operation or from its
//!   worker threads, one at a time, never after the operation returned.
//!
//! A callback must not call back into the operation that reports to it.

use std::fmt;
use std::sync::{Arc, Mutex};

/// What a [`Progress`] calls: `f(done, total)`.
type Callback = dyn Fn(u64, u64) + Send + Sync;

/// A progress callback: `f(done, total)`, both in bytes.
#[derive(Clone)]
pub struct Progress(Arc<Callback>);

impl Progress {
    /// Wraps a closure called with `(done, total)` in bytes.
    pub fn new(f: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        Progress(Arc::new(f))
    }

    /// Starts reporting an operation of `total` bytes: calls `(0, total)`.
    pub fn start(&self, total: u64) -> Tracker {
        (self.0)(0, total);
        Tracker {
            progress: Some(self.clone()),
            total,
            state: Mutex::new(State { done: 0, reported: 0 }),
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Progress(..)")
    }
}

/// Two callbacks are equal when they are the same closure.
impl PartialEq for Progress {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Progress {}

#[derive(Debug)]
struct State {
    done: u64,
    reported: u64,
}

/// One operation's report: advanced by the bytes each step finishes, from
/// any thread; keeps the contract of the module (increasing, serialized,
/// ending at the total).
#[derive(Debug)]
pub struct Tracker {
    progress: Option<Progress>,
    total: u64,
    state: Mutex<State>,
}

impl Tracker {
    /// A tracker that reports to `progress` if there is one, or to nobody.
    pub fn maybe(progress: Option<&Progress>, total: u64) -> Tracker {
        match progress {
            Some(p) => p.start(total),
            None => Tracker::silent(total),
        }
    }

    /// A tracker that reports to nobody (no callback was given).
    pub fn silent(total: u64) -> Tracker {
        Tracker {
            progress: None,
            total,
            state: Mutex::new(State { done: 0, reported: 0 }),
        }
    }

    /// The operation's total in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Records `bytes` more done and reports the new count, unless it
    /// would not be larger than the last report. Counts past the total
    /// are clamped to it; the report of the total itself waits for
    /// [`Tracker::finish`], so that a caller never sees the end of an
    /// operation that then fails.
    pub fn advance(&self, bytes: u64) {
        let Some(progress) = &self.progress else { return };
        // Held across the call: reports from several threads are
        // serialized and each sees a larger count than the last.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.done = state.done.saturating_add(bytes).min(self.total);
        if state.done > state.reported && state.done < self.total {
            state.reported = state.done;
            (progress.0)(state.done, self.total);
        }
    }

    /// Reports `(total, total)`: the operation succeeded.
    pub fn finish(self) {
        let Some(progress) = &self.progress else { return };
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // An empty operation's start, (0, 0), was already its end.
        if state.reported < self.total {
            (progress.0)(self.total, self.total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Calls = Arc<Mutex<Vec<(u64, u64)>>>;

    fn recorder() -> (Progress, Calls) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let sink = calls.clone();
        (Progress::new(move |d, t| sink.lock().unwrap().push((d, t))), calls)
    }

    #[test]
    fn reports_start_increasing_counts_and_the_total_once() {
        let (p, calls) = recorder();
        let t = p.start(10);
        t.advance(3);
        t.advance(0);
        t.advance(4);
        t.advance(5); // clamped: the total is reported by finish alone
        t.finish();
        assert_eq!(*calls.lock().unwrap(), vec![(0, 10), (3, 10), (7, 10), (10, 10)]);
    }

    #[test]
    fn an_empty_operation_reports_its_start_only() {
        let (p, calls) = recorder();
        p.start(0).finish();
        assert_eq!(*calls.lock().unwrap(), vec![(0, 0)]);
    }

    #[test]
    fn a_failed_operation_never_reports_the_total() {
        let (p, calls) = recorder();
        let t = p.start(8);
        t.advance(8);
        drop(t);
        assert_eq!(*calls.lock().unwrap(), vec![(0, 8)]);
    }

    #[test]
    fn reports_from_many_threads_stay_increasing() {
        let (p, calls) = recorder();
        let t = p.start(8000);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| (0..1000).for_each(|_| t.advance(1)));
            }
        });
        t.finish();
        let calls = calls.lock().unwrap();
        assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(*calls.last().unwrap(), (8000, 8000));
    }
}
