//! A one-line progress display on standard error, redrawn a few times a second.
//!
//! It polls the counters the library updates, so the library needs no knowledge of terminals.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lifeboat_files::{BackupProgress, RestoreProgress};
use lifeboat_repo::CopyProgress;
use lifeboat_repo::check::CheckProgress;

use crate::bytes;

/// A running display; [`Display::stop`] clears the line.
pub struct Display {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Display {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How progress is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing (quiet, or not a terminal).
    Off,
    /// One line on standard error, redrawn.
    Line,
    /// A JSON status object per second on standard output (`--json`); the final result is the
    /// last line.
    Json,
}

fn start(
    mode: Mode,
    line: impl Fn(Duration) -> String + Send + 'static,
    json: impl Fn(Duration) -> serde_json::Value + Send + 'static,
) -> Display {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = (mode != Mode::Off).then(|| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let period = if mode == Mode::Json {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(200)
            };
            let mut next = started + period;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() < next {
                    continue;
                }
                next += period;
                if mode == Mode::Json {
                    println!("{}", json(started.elapsed()));
                } else {
                    let mut text = line(started.elapsed());
                    text.truncate(150);
                    eprint!("\r\x1b[2K{text}");
                    let _ = std::io::stderr().flush();
                }
            }
            if mode == Mode::Line {
                eprint!("\r\x1b[2K");
            }
        })
    });
    Display { stop, thread }
}

pub fn start_backup(progress: Arc<BackupProgress>, mode: Mode) -> Display {
    let p = progress.clone();
    start(
        mode,
        move |elapsed| {
            let read = progress.bytes_read.load(Ordering::Relaxed);
            let rate = read as f64 / elapsed.as_secs_f64().max(0.001);
            format!(
                "[{:>5.0}s] {} files, {} read ({}/s), {} errors  {}",
                elapsed.as_secs_f64(),
                progress.files_done.load(Ordering::Relaxed),
                bytes(read),
                bytes(rate as u64),
                progress.errors.load(Ordering::Relaxed),
                progress.current.lock().display()
            )
        },
        move |elapsed| {
            serde_json::json!({
                "type": "status",
                "seconds": elapsed.as_secs_f64(),
                "files_done": p.files_done.load(Ordering::Relaxed),
                "bytes_read": p.bytes_read.load(Ordering::Relaxed),
                "errors": p.errors.load(Ordering::Relaxed),
                "current": p.current.lock().display().to_string(),
            })
        },
    )
}

pub fn start_restore(progress: Arc<RestoreProgress>, mode: Mode) -> Display {
    let p = progress.clone();
    start(
        mode,
        move |elapsed| {
            let done = progress.bytes_done.load(Ordering::Relaxed);
            let checked = progress.bytes_checked.load(Ordering::Relaxed);
            let total = progress.bytes_total.load(Ordering::Relaxed);
            if total == 0 && checked > 0 {
                // --delta: existing files are being compared; the total comes after.
                return format!(
                    "[{:>5.0}s] comparing existing files: {} read",
                    elapsed.as_secs_f64(),
                    bytes(checked)
                );
            }
            let total = total.max(1);
            let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
            let eta = (total.saturating_sub(done)) as f64 / rate.max(1.0);
            format!(
                "[{:>5.0}s] {} of {} ({:.0}%), {}/s, ETA {:.0}s",
                elapsed.as_secs_f64(),
                bytes(done),
                bytes(total),
                100.0 * done as f64 / total as f64,
                bytes(rate as u64),
                eta
            )
        },
        move |elapsed| {
            serde_json::json!({
                "type": "status",
                "seconds": elapsed.as_secs_f64(),
                "bytes_done": p.bytes_done.load(Ordering::Relaxed),
                "bytes_total": p.bytes_total.load(Ordering::Relaxed),
                "packs_done": p.packs_done.load(Ordering::Relaxed),
                "bytes_checked": p.bytes_checked.load(Ordering::Relaxed),
            })
        },
    )
}

pub fn start_check(progress: Arc<CheckProgress>, mode: Mode) -> Display {
    let p = progress.clone();
    start(
        mode,
        move |elapsed| {
            let done = progress.packs_done.load(Ordering::Relaxed);
            let total = progress.packs_total.load(Ordering::Relaxed);
            let read = progress.bytes_read.load(Ordering::Relaxed);
            let rate = read as f64 / elapsed.as_secs_f64().max(0.001);
            if total == 0 {
                format!(
                    "[{:>5.0}s] {} snapshots walked",
                    elapsed.as_secs_f64(),
                    progress.snapshots_done.load(Ordering::Relaxed)
                )
            } else {
                let eta =
                    (total - done.min(total)) as f64 * elapsed.as_secs_f64() / done.max(1) as f64;
                format!(
                    "[{:>5.0}s] {done} of {total} packs verified ({:.0}%), {} read, {}/s, ETA {eta:.0}s",
                    elapsed.as_secs_f64(),
                    100.0 * done as f64 / total as f64,
                    bytes(read),
                    bytes(rate as u64),
                )
            }
        },
        move |elapsed| {
            serde_json::json!({
                "type": "status",
                "seconds": elapsed.as_secs_f64(),
                "snapshots_done": p.snapshots_done.load(Ordering::Relaxed),
                "packs_done": p.packs_done.load(Ordering::Relaxed),
                "packs_total": p.packs_total.load(Ordering::Relaxed),
                "bytes_read": p.bytes_read.load(Ordering::Relaxed),
            })
        },
    )
}

pub fn start_copy(progress: Arc<CopyProgress>, mode: Mode) -> Display {
    let p = progress.clone();
    start(
        mode,
        move |elapsed| {
            let copied = progress.bytes_copied.load(Ordering::Relaxed);
            format!(
                "[{:>5.0}s] {} of {} snapshots, {} copied ({}/s)",
                elapsed.as_secs_f64(),
                progress.snapshots_done.load(Ordering::Relaxed),
                progress.snapshots_total.load(Ordering::Relaxed),
                bytes(copied),
                bytes((copied as f64 / elapsed.as_secs_f64().max(0.001)) as u64),
            )
        },
        move |elapsed| {
            serde_json::json!({
                "type": "status",
                "seconds": elapsed.as_secs_f64(),
                "snapshots_done": p.snapshots_done.load(Ordering::Relaxed),
                "snapshots_total": p.snapshots_total.load(Ordering::Relaxed),
                "bytes_copied": p.bytes_copied.load(Ordering::Relaxed),
            })
        },
    )
}
