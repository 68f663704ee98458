//! What a person sees while files are separated, on stderr: a progress bar per file when stderr
//! is a terminal (an indicatif `MultiProgress`), else one line per step (as cargo and demucs
//! do when piped), so logs stay readable.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a bar redraws on its own (its elapsed time moves while the server works).
const TICK: Duration = Duration::from_millis(200);

/// A bar while uploading: 24 columns of bar leave room for the file name, the numbers and a
/// message on an 80-column terminal.
const BAR_TEMPLATE_UPLOAD: &str =
    "{prefix:.bold} [{bar:24.cyan/blue}] {bytes:>9}/{total_bytes:<9} {msg}";
/// A bar while the server works: percent done, and time since separation started.
const BAR_TEMPLATE_PERCENT: &str =
    "{prefix:.bold} [{bar:24.cyan/blue}] {pos:>3}% {elapsed:>4} {msg}";

/// A bar before its file is uploaded: its name and what it waits for.
const BAR_TEMPLATE_WAITING: &str = "{prefix:.bold} {msg}";

/// Step between the progress lines printed when stderr is not a terminal: four lines per song.
const LINE_STEP_PERCENT: u8 = 25;

/// Every file's progress.
pub struct Progress {
    bars: Option<MultiProgress>,
    width: usize,
}

impl Progress {
    /// Bars when stderr is a terminal, lines otherwise; `labels` are the names shown, for
    /// aligning them.
    pub fn new<'a>(labels: impl Iterator<Item = &'a str>) -> Progress {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            bars,
            width: labels.map(|l| l.chars().count()).max().unwrap_or(0),
        }
    }

    /// The progress of the file shown as `label`.
    pub fn file(&self, label: &str) -> FileProgress {
        let bar = self.bars.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(style(BAR_TEMPLATE_WAITING));
            bar.set_prefix(format!("{label:<width$}", width = self.width));
            bar.set_message("waiting to upload");
            bar.enable_steady_tick(TICK);
            bar
        });
        FileProgress {
            bar,
            label: label.to_string(),
            printed: Mutex::new(None),
            counting_percent: AtomicBool::new(false),
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the bar templates are valid")
        .progress_chars("=> ")
}

/// One file's progress.
pub struct FileProgress {
    bar: Option<ProgressBar>,
    label: String,
    /// The stage and percentage step last printed as a line.
    printed: Mutex<Option<(String, u8)>>,
    /// Whether the bar counts percent (the server's work) rather than bytes (the upload).
    counting_percent: AtomicBool,
}

impl FileProgress {
    /// Bytes to upload: the bar counts them.
    pub fn uploading(&self, bytes: u64, line: &str) {
        match &self.bar {
            Some(bar) => {
                // Length and position before the style: a redraw in between shows no nonsense.
                self.counting_percent.store(false, Ordering::Relaxed);
                bar.set_position(0);
                bar.set_length(bytes);
                bar.set_message("uploading");
                bar.set_style(style(BAR_TEMPLATE_UPLOAD));
            }
            None => self.line(line),
        }
    }

    /// What counts bytes as they are sent, for the upload's body.
    pub fn counter(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let bar = self.bar.clone();
        move |n| {
            if let Some(bar) = &bar {
                bar.inc(n);
            }
        }
    }

    /// A file was written: a line when there is no bar (a bar moves on to the next file).
    pub fn written(&self, message: &str) {
        if self.bar.is_none() {
            self.line(message);
        }
    }

    /// What is being done now, shown on the bar only (a line would only repeat the next step).
    pub fn activity(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_string());
        }
    }

    /// A step: the bar's message, or a line.
    pub fn step(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None => self.line(message),
        }
    }

    /// Where separation is: `percent` done, at `stage` (the song's state), doing `detail`. A
    /// line is printed when the stage changes and at each [`LINE_STEP_PERCENT`], not for every
    /// event.
    pub fn percent(&self, percent: u8, stage: &str, detail: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(percent.min(100).into());
                bar.set_message(detail.to_string());
                if !self.counting_percent.swap(true, Ordering::Relaxed) {
                    // The style first: it prints the position, which is already the percent.
                    bar.set_style(style(BAR_TEMPLATE_PERCENT));
                    bar.set_length(100);
                    bar.reset_elapsed();
                }
            }
            None => {
                let step = percent - percent % LINE_STEP_PERCENT;
                let mut printed = self.printed.lock().unwrap_or_else(|p| p.into_inner());
                let news = match &*printed {
                    None => true,
                    Some((s, p)) => s != stage || step > *p,
                };
                if news {
                    *printed = Some((stage.to_string(), step));
                    self.line(&format!("{percent:>3}% {detail}"));
                }
            }
        }
    }

    /// The file is done.
    pub fn done(&self, message: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(bar.length().unwrap_or(0));
                bar.finish_with_message(message.to_string());
            }
            None => self.line(message),
        }
    }

    /// The file failed: the bar stops where it was, with the reason. (Without bars the error
    /// is printed once, with the others, when every file is through.)
    pub fn failed(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.abandon_with_message(format!("failed: {message}"));
        }
    }

    fn line(&self, message: &str) {
        eprintln!("{}: {message}", self.label);
    }
}
