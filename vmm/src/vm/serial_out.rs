//! The guest's serial output on its way to efivmm's stdout or a file,
//! through a bounded queue drained by a writer thread of its own.
//!
//! A vCPU writes the UART with the devices lock held, so a blocking write
//! there (stdout a pipe nobody reads, a terminal on hold, a stuck file
//! system) would stop that vCPU, every other vCPU touching a port, and the
//! event loop's console input, and keep efivmm from stopping. Here the vCPU
//! only appends to a queue; when the queue is full the bytes are dropped
//! and counted. At the end efivmm waits for the writer only while it makes
//! progress ([`STALL`]): a writer stuck for good is left behind and the
//! process exits without it.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Most output bytes held for the writer.
pub const QUEUE_MAX: usize = 1 << 20;
/// How long the end of a run waits for a writer that makes no progress.
pub const STALL: Duration = Duration::from_millis(500);

#[derive(Default)]
struct State {
    queue: VecDeque<u8>,
    /// No more output: the writer ends once the queue is empty.
    closed: bool,
    /// Bytes the writer has written so far.
    written: u64,
    /// The writer thread is gone (its output failed, or it finished).
    gone: bool,
}

struct Inner {
    state: Mutex<State>,
    /// Signalled when there is output (for the writer) or progress (for
    /// the closing side).
    changed: Condvar,
    dropped: AtomicU64,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A `Write` that never blocks: it queues for a writer thread.
pub struct QueuedOutput {
    inner: Arc<Inner>,
}

impl QueuedOutput {
    /// Starts a writer thread writing to `out`.
    pub fn new(mut out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let inner = Arc::new(Inner { state: Mutex::default(), changed: Condvar::new(), dropped: AtomicU64::new(0) });
        let theirs = inner.clone();
        std::thread::Builder::new().name("serial-out".into()).spawn(move || {
            let mut chunk = Vec::with_capacity(64 * 1024);
            // Confined before it writes anything (docs/security.md); a
            // writer that cannot be confined writes nothing.
            let confined = crate::confine::install_if_enabled(crate::confine::Role::ConsoleWriter);
            if let Err(e) = &confined {
                tracing::error!("serial output: {e}; the guest's output is discarded");
            }
            while confined.is_ok() {
                {
                    let mut state = theirs.lock();
                    while state.queue.is_empty() && !state.closed {
                        state = theirs.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                    }
                    if state.queue.is_empty() {
                        break;
                    }
                    let n = state.queue.len().min(chunk.capacity());
                    chunk.clear();
                    chunk.extend(state.queue.drain(..n));
                }
                // Outside the lock: this may block for as long as the
                // reader of our output wants.
                if let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) {
                    tracing::warn!("serial output: {e}; the rest of the guest's output is discarded");
                    break;
                }
                theirs.lock().written += chunk.len() as u64;
                theirs.changed.notify_all();
            }
            let mut state = theirs.lock();
            state.gone = true;
            state.queue.clear();
            theirs.changed.notify_all();
        })?;
        Ok(QueuedOutput { inner })
    }

    /// Bytes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

impl Write for QueuedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.inner.lock();
        if state.gone {
            return Ok(buf.len());
        }
        let taken = buf.len().min(QUEUE_MAX - state.queue.len());
        state.queue.extend(&buf[..taken]);
        drop(state);
        if taken > 0 {
            self.inner.changed.notify_all();
        }
        if taken < buf.len() {
            let lost = (buf.len() - taken) as u64;
            let before = self.inner.dropped.fetch_add(lost, Ordering::Relaxed);
            if before == 0 {
                tracing::warn!("the guest's serial output is not being read; dropping what does not fit the queue");
            }
        }
        // Never blocks and never fails: the guest's UART must not stall.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedOutput {
    /// Lets the writer finish the queue while it makes progress; gives up
    /// after [`STALL`] without any.
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        state.closed = true;
        self.inner.changed.notify_all();
        let mut last = state.written;
        while !state.gone && !state.queue.is_empty() {
            let (next, timeout) = self.inner.changed.wait_timeout(state, STALL).unwrap_or_else(|p| p.into_inner());
            state = next;
            if timeout.timed_out() && state.written == last {
                tracing::warn!(left = state.queue.len(), "the guest's serial output is stuck; not waiting for it");
                break;
            }
            last = state.written;
        }
        let dropped = self.dropped();
        if dropped > 0 {
            tracing::warn!(dropped, "bytes of the guest's serial output were dropped: nobody read them in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A writer that blocks forever after `n` bytes.
    struct Stuck(Arc<Mutex<Vec<u8>>>, usize);
    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut got = self.0.lock().unwrap();
            if got.len() >= self.1 {
                drop(got);
                loop {
                    std::thread::park();
                }
            }
            let n = b.len().min(self.1 - got.len());
            got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_writer_in_order() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut out = QueuedOutput::new(Box::new(Stuck(got.clone(), usize::MAX))).unwrap();
        for i in 0..1000u32 {
            out.write_all(&i.to_le_bytes()).unwrap();
        }
        drop(out);
        let want: Vec<u8> = (0..1000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(*got.lock().unwrap(), want);
    }

    #[test]
    fn a_stuck_writer_blocks_neither_writes_nor_the_end() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut out = QueuedOutput::new(Box::new(Stuck(got.clone(), 100))).unwrap();
        let start = Instant::now();
        for _ in 0..3 * QUEUE_MAX / 4096 {
            out.write_all(&[b'x'; 4096]).unwrap();
        }
        assert!(out.dropped() >= (QUEUE_MAX as u64) - 100);
        drop(out);
        assert!(start.elapsed() < STALL * 4, "{:?}", start.elapsed());
        assert_eq!(got.lock().unwrap().len(), 100);
    }
}
