//! The runtime the object store's requests run on, behind the crate's
//! blocking API.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

/// Worker threads of the runtime: requests mostly wait on the network, and
/// the byte copies they do are small next to the transfers.
const WORKERS: usize = 4;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("pytorch-saver-io")
            .enable_all()
            .build()
            .expect("a tokio runtime can be built (threads and an epoll instance)")
    })
}

/// Runs `future` to completion and returns its output. Called from inside
/// another tokio runtime (a caller's async code), it runs on a thread of
/// its own, since a runtime cannot block one of its own workers.
pub(crate) fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| runtime().block_on(future))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    } else {
        runtime().block_on(future)
    }
}

/// Starts `future` on the runtime; its handle yields the output.
pub(crate) fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime().spawn(future)
}
