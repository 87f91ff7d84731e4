//! The progress bar on stderr while workers load.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::ProgressBar;
use isola_config::WorkerConfig;
use isola_server::Progress;

/// A bar on a terminal when more than one worker loads; nothing otherwise.
pub struct Bar {
    message: &'static str,
    bar: Mutex<ProgressBar>,
}

impl Bar {
    pub fn new(message: &'static str) -> Bar {
        Bar {
            message,
            bar: Mutex::new(ProgressBar::hidden()),
        }
    }

    fn current(&self) -> ProgressBar {
        self.bar.lock().expect("progress lock").clone()
    }
}

impl Progress for Bar {
    fn start(&self, total: usize) {
        let bar = if total > 1 && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total as u64);
            bar.set_message(self.message);
            bar
        } else {
            ProgressBar::hidden()
        };
        *self.bar.lock().expect("progress lock") = bar;
    }

    fn done(&self, _worker: &WorkerConfig) {
        self.current().inc(1);
    }

    fn finish(&self) {
        self.current().finish_and_clear();
    }
}
