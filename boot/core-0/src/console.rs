//! Everything core-0 says goes to the console, prefixed, one line at a time.

/// Writes one line to the console (stderr, which is /dev/console for PID 1).
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "core-0: {line}");
}

/// `say!("...", args)`: a console line from core-0.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::console::say(format_args!($($arg)*)) };
}

/// Exponential backoff between attempts: 1 s, 2 s, 4 s ... `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: std::time::Duration,
    max: std::time::Duration,
}

impl Backoff {
    pub fn new(first: std::time::Duration, max: std::time::Duration) -> Self {
        Self { next: first, max }
    }
    /// The wait before the next attempt; each call doubles the following one up to the cap.
    pub fn next_wait(&mut self) -> std::time::Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let waits: Vec<_> = (0..5).map(|_| b.next_wait().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
    }
}
