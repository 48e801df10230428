//! Where log lines go: stderr, through a buffer that a thread of its own writes out.
//!
//! A line at INFO or below is appended to the buffer and the caller goes on; the writer wakes
//! when the buffer stops being empty, waits [`GATHER`] for more, and writes all of it at
//! once. At a few thousand requests a second that is one `write` every 20 ms instead of one
//! per request. A WARN or ERROR line is written before its caller goes on, with whatever was
//! buffered before it, so the lines that matter in a crash are out by then, in order. The
//! buffer is flushed at exit ([`super::shutdown`]) and when the process panics.
//!
//! If stderr stops taking lines (a log collector that stopped reading), the buffer stops at
//! [`BOUND`]: later lines are dropped and counted rather than holding requests up or growing
//! the process, and the count is logged when writing resumes. A WARN or ERROR line still
//! waits for stderr to take it (and what was buffered before it), as every line once did.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How long the writer gathers lines after the first before writing them.
pub const GATHER: Duration = Duration::from_millis(20);
/// Bytes buffered at most while stderr is not taking them.
pub const BOUND: usize = 4 << 20;
/// The largest buffer kept for reuse after a flush.
const KEPT: usize = 1 << 20;

/// The buffered stderr (clones share it).
#[derive(Clone)]
pub struct Sink {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Rung when the buffer stops being empty.
    filled: Condvar,
    /// Held while writing, so what was taken first is written first.
    output: Mutex<()>,
    json: bool,
    /// False when the writer thread could not start: every line is written by its caller.
    buffered: AtomicBool,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    dropped: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sink {
    /// Starts the writer thread. `json` chooses the form of the line that reports dropped
    /// lines.
    pub fn start(json: bool) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            filled: Condvar::new(),
            output: Mutex::new(()),
            json,
            buffered: AtomicBool::new(true),
        });
        let writer = Arc::clone(&shared);
        let started = std::thread::Builder::new()
            .name("herald-log".into())
            .spawn(move || {
                loop {
                    {
                        let mut pending = lock(&writer.pending);
                        while pending.bytes.is_empty() && pending.dropped == 0 {
                            pending = writer
                                .filled
                                .wait(pending)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                    }
                    std::thread::sleep(GATHER);
                    writer.flush();
                }
            });
        if let Err(err) = started {
            // Without the thread every line is written by its caller.
            eprintln!("logs are written unbuffered: no writer thread: {err}");
            shared.buffered.store(false, Ordering::Relaxed);
        }
        Self { shared }
    }

    /// Writes out whatever is buffered, now.
    pub fn flush(&self) {
        self.shared.flush();
    }
}

impl Shared {
    fn append(&self, line: &[u8], urgent: bool) {
        let mut pending = lock(&self.pending);
        if !admits(pending.bytes.len(), line.len()) {
            pending.dropped += 1;
            return;
        }
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        drop(pending);
        if urgent || !self.buffered.load(Ordering::Relaxed) {
            self.flush();
        } else if was_empty {
            self.filled.notify_one();
        }
    }

    fn flush(&self) {
        let _output = lock(&self.output);
        let (mut bytes, dropped) = {
            let mut pending = lock(&self.pending);
            (
                std::mem::take(&mut pending.bytes),
                std::mem::take(&mut pending.dropped),
            )
        };
        let mut stderr = std::io::stderr().lock();
        if dropped > 0 {
            let _ = if self.json {
                writeln!(
                    stderr,
                    r#"{{"timestamp":"{:.6}","level":"WARN","message":"log lines dropped: stderr was not taking them","dropped":{dropped},"target":"platform::telemetry"}}"#,
                    jiff::Timestamp::now()
                )
            } else {
                writeln!(
                    stderr,
                    "{:.6}  WARN platform::telemetry: {dropped} log lines dropped: stderr was not taking them",
                    jiff::Timestamp::now()
                )
            };
        }
        // A failed write loses these lines, as an unbuffered one would have.
        let _ = stderr.write_all(&bytes);
        let _ = stderr.flush();
        drop(stderr);
        // The buffer goes back for the next lines, so it is not grown again from nothing on
        // every flush (unless a burst made it large, or lines came in meanwhile).
        if bytes.capacity() <= KEPT {
            bytes.clear();
            let mut pending = lock(&self.pending);
            if pending.bytes.is_empty() {
                pending.bytes = bytes;
            }
        }
    }
}

/// Whether a line of `line` bytes joins `buffered` bytes waiting: up to [`BOUND`] in all, and
/// a line alone whatever its size (a debug line with a large body), so the bound drops lines
/// only while stderr is behind, never a line for being long.
fn admits(buffered: usize, line: usize) -> bool {
    buffered == 0 || buffered + line <= BOUND
}

/// One line's writer: the fmt layer writes each formatted line with one `write_all`.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl std::io::Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.shared.append(line, self.urgent);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{BOUND, admits};

    #[test]
    fn the_bound_drops_lines_only_while_others_wait() {
        assert!(admits(0, 100));
        assert!(admits(0, BOUND * 2), "a long line alone is written");
        assert!(admits(BOUND - 100, 100));
        assert!(!admits(BOUND - 100, 101));
        assert!(!admits(1, BOUND));
    }
}
