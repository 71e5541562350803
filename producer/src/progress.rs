//! Progress of a long producer run (`enqueue --count`, `wait --batch`): an `indicatif` bar
//! when stderr is a terminal; otherwise one plain line every few seconds and at the end, so
//! that logs and pipes get whole lines rather than carriage returns.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a plain progress line is written when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);

pub enum Progress {
    Bar(indicatif::ProgressBar),
    Lines {
        total: u64,
        done: u64,
        what: &'static str,
        last: Instant,
        started: Instant,
    },
}

impl Progress {
    /// Progress towards `total`, described as `what` ("enqueued", "finished").
    pub fn new(total: u64, what: &'static str) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "[{bar:30}] {pos}/{len} {msg} ({per_sec}, {eta} left)",
            ) {
                bar.set_style(style.progress_chars("#>-"));
            }
            bar.set_message(what);
            Progress::Bar(bar)
        } else {
            let now = Instant::now();
            Progress::Lines {
                total,
                done: 0,
                what,
                last: now,
                started: now,
            }
        }
    }

    pub fn set(&mut self, done: u64) {
        match self {
            Progress::Bar(bar) => bar.set_position(done),
            Progress::Lines {
                total,
                done: d,
                what,
                last,
                started,
            } => {
                *d = done;
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    eprintln!(
                        "agentfleet: {what} {done}/{total} ({:.0}/s)",
                        done as f64 / started.elapsed().as_secs_f64().max(1e-9)
                    );
                }
            }
        }
    }

    /// The last state: the bar cleared, or a final line.
    pub fn finish(self) {
        match self {
            Progress::Bar(bar) => bar.finish_and_clear(),
            Progress::Lines {
                total, done, what, ..
            } => eprintln!("agentfleet: {what} {done}/{total}"),
        }
    }
}
