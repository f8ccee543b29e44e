//! The save in flight: a thread of the manager writes a snapshot and
//! applies retention once the file is committed; its outcome waits until
//! [`Background::wait`] or the next save collects it. The snapshot buffer
//! comes back from the thread, to be reused by the next snapshot.

use std::path::PathBuf;
use std::thread::JoinHandle;

use super::series::Series;
use super::Policy;
use crate::container::Snapshot;
use crate::error::{panic_message, Error, Result};

type Outcome = (Result<PathBuf>, Vec<u8>);

#[derive(Default)]
pub(super) struct Background {
    in_flight: Option<JoinHandle<Outcome>>,
    /// The outcome of a finished save nobody has collected yet.
    uncollected: Option<Result<PathBuf>>,
    buffer: Vec<u8>,
}

impl Background {
    /// Starts writing `snapshot`, then applying `policy` to `series`.
    pub(super) fn start(
        &mut self,
        snapshot: Snapshot,
        series: Series,
        policy: Policy,
        pinned: Vec<String>,
    ) -> Result<()> {
        debug_assert!(self.in_flight.is_none(), "settled by take_uncollected_error");
        let handle = std::thread::Builder::new()
            .name("pts-checkpoint-save".into())
            .spawn(move || {
                let result = snapshot
                    .write(&series.dir.path())
                    .and_then(|path| series.apply_retention(&policy, &pinned).map(|()| path));
                (result, snapshot.into_buffer())
            })
            .map_err(|e| Error::Usage(format!("cannot start the background save thread: {e}")))?;
        self.in_flight = Some(handle);
        Ok(())
    }

    /// Waits for the save in flight, keeping its outcome uncollected.
    pub(super) fn settle(&mut self) {
        if let Some(handle) = self.in_flight.take() {
            let result = match handle.join() {
                Ok((result, buffer)) => {
                    self.buffer = buffer;
                    result
                }
                Err(payload) => Err(Error::Usage(format!(
                    "the background save panicked: {}",
                    panic_message(payload.as_ref())
                ))),
            };
            self.uncollected = Some(result);
        }
    }

    /// Waits for the save in flight and returns its outcome (`None` when
    /// there was none).
    pub(super) fn wait(&mut self) -> Result<Option<PathBuf>> {
        self.settle();
        self.uncollected.take().transpose()
    }

    /// Waits for the save in flight; an error nobody collected is
    /// returned (once), a success is dropped.
    pub(super) fn take_uncollected_error(&mut self) -> Result<()> {
        self.wait().map(drop)
    }

    /// The snapshot buffer, for the next snapshot (empty the first time).
    pub(super) fn take_buffer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buffer)
    }
}
