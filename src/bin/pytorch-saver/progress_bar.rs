//! The progress bar the CLI draws for long operations: on a terminal
//! (standard error is one) and nowhere else, so that scripts and logs
//! that capture the output see only the results.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pytorch_saver::Progress;

/// A bar on standard error labelled `label` (a file name, an operation),
/// fed by the returned [`Progress`]; `None` when standard error is not a
/// terminal. The bar clears itself when dropped.
pub fn on_terminal(label: &str) -> Option<(Progress, Bar)> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    let bar = Arc::new(bar);
    let feed = bar.clone();
    let progress = Progress::new(move |done, total| {
        feed.set_length(total);
        feed.set_position(done);
    });
    Some((progress, Bar(bar)))
}

/// Keeps a bar on screen while its operation runs.
pub struct Bar(Arc<ProgressBar>);

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
