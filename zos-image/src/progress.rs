//! Progress bars for long operations; silent when disabled or when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress(Option<ProgressBar>);

impl Progress {
    pub fn bytes(enabled: bool, total: u64, what: &str) -> Progress {
        Self::new(
            enabled,
            total,
            what,
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
    }

    pub fn items(enabled: bool, total: u64, what: &str) -> Progress {
        Self::new(
            enabled,
            total,
            what,
            "{msg} [{bar:30}] {pos}/{len} eta {eta}",
        )
    }

    fn new(enabled: bool, total: u64, what: &str, template: &str) -> Progress {
        if !enabled {
            return Progress(None);
        }
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Progress(Some(bar))
    }

    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
