//! `ttgctl watch RUN`: follow a run's events to its end. A progress bar with
//! chunks/s, parameters/s and ETA on a terminal, a plain line at most once a
//! second otherwise, JSON lines with `-o json`. If the stream drops (server
//! restart, network), it reconnects and resumes after the last event seen.
//! A terminal event ends the watch only when the stream ends after it: a run
//! that was retried after it failed goes on, and so does the watch. Repeated
//! failures with the same error are folded into one line ("× 30").
//! Ends by printing the aggregate; exit 0 if the run succeeded, 1 otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tonic::Code;
use ttg_proto::runtime::Backoff;
use ttg_proto::v1::{event, Event, RunState, WatchRequest};

use crate::client::{self, CliError, CliResult, EXIT_FAILED, EXIT_OK};
use crate::output::{aggregate_text, event_json, state_name, thousands, Format};

/// Give up reconnecting after this long without a stream.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// With no event for this long, ask the server why the run waits.
const WAITING_CHECK: Duration = Duration::from_secs(2);

/// `ttgctl watch`'s arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run id, a unique prefix of one, or `latest` (also `-`).
    pub run: String,
    /// Resume after this event id [default: from the start].
    #[arg(long, default_value = "", hide_default_value = true)]
    pub after: String,
}

/// A reclaim seen during a watch.
#[derive(Debug, Clone, Default)]
pub struct Reclaim {
    /// Chunk index.
    pub chunk: u64,
    /// Server-measured delay from detection to re-queue.
    pub after_ms: u64,
    /// Event time (Redis clock, ms since epoch).
    pub time_ms: i64,
}

/// What a finished watch saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Final state.
    pub state: i32,
    /// Final aggregate sum.
    pub sum: f64,
    /// Final aggregate count.
    pub count: u64,
    /// Chunks reclaimed during the watch.
    pub reclaims: Vec<Reclaim>,
    /// Exit code for the process.
    pub exit: i32,
}

/// Failures with one error, folded into one line.
struct Folded {
    error: String,
    repeats: u64,
    chunks: Vec<u64>,
}

struct Progress {
    bar: Option<ProgressBar>,
    folded: Option<Folded>,
    plain: bool,
    last_line: Option<Instant>,
    printed_last: bool,
    started_ms: i64,
    params_total: u64,
    /// The run names its space or outputs: show the best point so far.
    sweep: bool,
    /// The best so far (first output's minimum), as last streamed.
    best: String,
    /// Per-output summaries of the last event that carried them.
    pub summaries: Vec<ttg_proto::v1::OutputSummary>,
    /// The waiting reason shown last.
    waiting_for: String,
}

impl Progress {
    /// A bar on a terminal, plain lines otherwise (text), nothing for JSON.
    fn new(st: &ttg_proto::v1::RunStatus, format: Format) -> Self {
        let spec = st.spec.clone().unwrap_or_default();
        let fancy = format == Format::Text && std::io::stderr().is_terminal();
        let bar = fancy.then(|| {
            let b = ProgressBar::with_draw_target(
                Some(spec.total_chunks),
                ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} chunks  {msg}",
            ) {
                b.set_style(style);
            }
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress {
            bar,
            folded: None,
            plain: format == Format::Text && !fancy,
            last_line: None,
            printed_last: false,
            started_ms: st.started_ms,
            params_total: spec.params,
            sweep: spec.space.is_some() || !spec.outputs.is_empty(),
            best: String::new(),
            summaries: st.outputs.clone(),
            waiting_for: String::new(),
        }
    }

    fn update(&mut self, e: &Event) {
        if !e.outputs.is_empty() {
            self.summaries = e.outputs.clone();
            if self.sweep {
                if let Some(o) = e.outputs.first().filter(|o| o.argmin.is_some()) {
                    let a = o.aggregate.unwrap_or_default();
                    let at = o
                        .argmin
                        .as_ref()
                        .map(|p| crate::sweep::coords(&p.values))
                        .unwrap_or_default();
                    self.best = format!(", best {} {} at {at}", o.name, a.min);
                }
            }
        }
        let p = e.progress.unwrap_or_default();
        if self.started_ms == 0 {
            if let Some(event::Kind::RunStarted(_)) | Some(event::Kind::ChunkCompleted(_)) = e.kind
            {
                self.started_ms = e.time_ms;
            }
        }
        let secs = ((e.time_ms - self.started_ms) as f64 / 1000.0).max(1e-3);
        let chunk_rate = if self.started_ms > 0 {
            p.chunks_done as f64 / secs
        } else {
            0.0
        };
        let param_rate = if self.started_ms > 0 {
            p.params_done as f64 / secs
        } else {
            0.0
        };
        let left = p.chunks_total.saturating_sub(p.chunks_done + p.chunks_dead);
        let eta = if chunk_rate > 0.0 {
            format!("{:.1}s", left as f64 / chunk_rate)
        } else {
            "-".into()
        };
        let dead = if p.chunks_dead > 0 {
            format!("{} dead, ", p.chunks_dead)
        } else {
            String::new()
        };
        let msg = format!(
            "{dead}{} chunks/s, {} params/s, ETA {eta}{}",
            thousands(chunk_rate, 0),
            thousands(param_rate, 0),
            self.best
        );
        if let Some(bar) = &self.bar {
            // Done chunks only: a run with dead chunks never shows 100 %.
            bar.set_length(p.chunks_total);
            bar.set_position(p.chunks_done);
            bar.set_message(msg);
        } else if self.plain {
            let due = self
                .last_line
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if (due || left == 0) && !self.printed_last {
                self.last_line = Some(Instant::now());
                self.printed_last = left == 0;
                let pct = if p.chunks_total > 0 {
                    100.0 * p.chunks_done as f64 / p.chunks_total as f64
                } else {
                    0.0
                };
                println!(
                    "{}/{} chunks ({pct:.0}%), {}/{} params, {msg}",
                    p.chunks_done, p.chunks_total, p.params_done, self.params_total
                );
            }
        }
    }

    fn note(&mut self, line: &str) {
        self.flush_folded();
        self.print(line);
    }

    /// A failure line; the same error again right after is counted, not
    /// printed, and shows as one "× N" line once something else happens.
    fn failure(&mut self, chunk: u64, line: &str, error: &str) {
        if let Some(f) = &mut self.folded {
            if f.error == error {
                f.repeats += 1;
                if f.chunks.len() < 5 {
                    f.chunks.push(chunk);
                }
                return;
            }
        }
        self.flush_folded();
        self.print(line);
        self.folded = Some(Folded {
            error: error.to_string(),
            repeats: 0,
            chunks: Vec::new(),
        });
    }

    fn flush_folded(&mut self) {
        if let Some(f) = self.folded.take() {
            if f.repeats > 0 {
                let mut chunks: Vec<String> = f.chunks.iter().map(u64::to_string).collect();
                if f.repeats as usize > chunks.len() {
                    chunks.push("…".into());
                }
                self.print(&format!(
                    "  … the same error × {} more (chunks {})",
                    f.repeats,
                    chunks.join(", ")
                ));
            }
        }
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if self.plain => println!("{line}"),
            None => {}
        }
    }

    /// Show why the run waits (the status message), once per change.
    fn waiting(&mut self, why: &str) {
        if why.is_empty() || why == self.waiting_for {
            return;
        }
        self.waiting_for = why.to_string();
        match &self.bar {
            Some(bar) => bar.set_message(why.to_string()),
            None => self.print(&format!("{why}…")),
        }
    }

    fn finish(&mut self) {
        self.flush_folded();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Watch `run_id` from after `after` to its end.
pub async fn watch(server: &str, run_id: &str, after: &str, format: Format) -> CliResult<Outcome> {
    // -o wide is text here: a watch is no list.
    let format = if format == Format::Wide {
        Format::Text
    } else {
        format
    };
    let mut client = client::control(server).await?;
    let st = client::run_status(&mut client, run_id).await?;
    let mut w = Watcher {
        run_id: run_id.to_string(),
        format,
        progress: Progress::new(&st, format),
        last: after.to_string(),
        outcome: Outcome::default(),
        ended: None,
    };
    if !ttg_proto::records::is_finished(
        RunState::try_from(st.state).unwrap_or(RunState::Unspecified),
    ) {
        w.progress.waiting(&st.message);
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    tokio::select! {
        r = w.run(server, &mut client) => r,
        _ = &mut interrupted => {
            w.progress.finish();
            Err(CliError::interrupted(format!(
                "stopped watching; run {run_id} goes on (`ttgctl watch {run_id}` follows it again, `ttgctl cancel {run_id}` stops it)"
            )))
        }
    }
}

impl Watcher {
    /// Follow the run to its end, reconnecting when the stream drops.
    async fn run(&mut self, server: &str, client: &mut client::Control) -> CliResult<Outcome> {
        let w = self;
        let run_id = w.run_id.clone();
        let run_id = run_id.as_str();
        let format = w.format;
        let mut down_since: Option<Instant> = None;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let why = match w.follow(client, &mut down_since, &mut backoff).await {
                Ok(Followed::Ended(end)) => {
                    w.progress.finish();
                    return Ok(conclude(
                        run_id,
                        &end,
                        &w.progress,
                        format,
                        std::mem::take(&mut w.outcome),
                    ));
                }
                Ok(Followed::Interrupted(why)) => why,
                Err(e) => {
                    w.progress.finish();
                    return Err(e);
                }
            };
            reconnect_wait(&mut down_since, &mut backoff, &mut w.progress, &why).await?;
            if let Ok(c) = client::control(server).await {
                *client = c;
            }
        }
    }
}

/// How one Watch stream ended.
enum Followed {
    /// At the run's end: its terminal event.
    Ended(Event),
    /// Cut short (server restart, network): resume after the last event.
    Interrupted(String),
}

/// A watch in progress.
struct Watcher {
    run_id: String,
    format: Format,
    progress: Progress,
    /// Id of the last event seen (resume after it).
    last: String,
    outcome: Outcome,
    /// The terminal event seen last, if nothing followed it yet.
    ended: Option<Event>,
}

impl Watcher {
    /// Read one Watch stream from after `last` until it ends.
    async fn follow(
        &mut self,
        client: &mut client::Control,
        down_since: &mut Option<Instant>,
        backoff: &mut Backoff,
    ) -> CliResult<Followed> {
        let stream = client
            .watch(WatchRequest {
                run_id: self.run_id.clone(),
                after_event_id: self.last.clone(),
                no_follow: false,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if retryable(s.code()) => return Ok(Followed::Interrupted(s.message().into())),
            Err(s) => return Err(s.into()),
        };
        let mut quiet_check = tokio::time::interval(WAITING_CHECK);
        quiet_check.tick().await;
        let mut last_event = Instant::now();
        loop {
            let next = tokio::select! {
                m = stream.message() => m,
                _ = quiet_check.tick() => {
                    // No news for a while: say why, if the server knows
                    // (say, no agent offers the run's kernel).
                    if last_event.elapsed() >= WAITING_CHECK {
                        if let Ok(st) = client::run_status(client, &self.run_id).await {
                            self.progress.waiting(&st.message);
                        }
                    }
                    continue;
                }
            };
            last_event = Instant::now();
            match next {
                Ok(Some(e)) => {
                    *down_since = None;
                    backoff.reset();
                    self.event(e);
                }
                Ok(None) => {
                    // After a terminal event the server ends the stream only
                    // if the run is still finished; check, since a server
                    // shutting down also ends it. Otherwise resume.
                    if let Some(end) = self.ended.take() {
                        if finished_now(client, &self.run_id).await {
                            return Ok(Followed::Ended(end));
                        }
                    }
                    return Ok(Followed::Interrupted("stream interrupted".into()));
                }
                Err(s) if retryable(s.code()) => {
                    return Ok(Followed::Interrupted("stream interrupted".into()))
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    /// Show one event and remember what the outcome needs.
    fn event(&mut self, e: Event) {
        self.last = e.id.clone();
        match self.format {
            Format::Json => println!("{}", event_json(&e)),
            Format::Yaml => print!(
                "---\n{}",
                serde_yaml_ng::to_string(&event_json(&e)).unwrap_or_default()
            ),
            _ => {}
        }
        self.progress.update(&e);
        match &e.kind {
            Some(event::Kind::ChunkReclaimed(r)) => {
                self.outcome.reclaims.push(Reclaim {
                    chunk: r.chunk_index,
                    after_ms: r.after_ms,
                    time_ms: e.time_ms,
                });
                self.progress.note(&format!(
                    "chunk {} reclaimed from agent {} ({}), back in the queue {} ms later as attempt {}",
                    r.chunk_index, r.agent_id, r.cause, r.after_ms, r.attempt
                ));
            }
            Some(event::Kind::RunRetried(r)) => {
                self.ended = None;
                self.progress
                    .note(&format!("{} chunks re-queued: the run goes on", r.chunks));
            }
            Some(event::Kind::ChunkFailed(f)) => self.progress.failure(
                f.chunk_index,
                &format!(
                    "chunk {} attempt {} failed on {}: {}{}",
                    f.chunk_index,
                    f.attempt,
                    f.agent_id,
                    f.error,
                    if f.dead { " — dead-lettered" } else { "" }
                ),
                &f.error,
            ),
            Some(event::Kind::RunCompleted(_)) | Some(event::Kind::RunCancelled(_)) => {
                // The end, unless more follows (a retry reopens a FAILED
                // run): decided when the stream ends.
                self.ended = Some(e);
            }
            _ => {}
        }
    }
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

async fn reconnect_wait(
    down_since: &mut Option<Instant>,
    backoff: &mut Backoff,
    progress: &mut Progress,
    why: &str,
) -> CliResult<()> {
    let since = *down_since.get_or_insert_with(Instant::now);
    if since.elapsed() > RECONNECT_FOR {
        progress.finish();
        return Err(CliError::unavailable(format!(
            "lost the server for over {}s ({why}); resume later with `ttgctl watch RUN`",
            RECONNECT_FOR.as_secs()
        )));
    }
    if since.elapsed() < Duration::from_millis(50) {
        progress.note(&format!("watch interrupted ({why}); reconnecting…"));
    }
    tokio::time::sleep(backoff.next_delay()).await;
    Ok(())
}

/// Whether the run is in a final state now (false if that cannot be told).
async fn finished_now(client: &mut client::Control, run_id: &str) -> bool {
    client::run_status(client, run_id)
        .await
        .map(|s| {
            let s = s.state;
            s == RunState::Succeeded as i32
                || s == RunState::Failed as i32
                || s == RunState::Cancelled as i32
        })
        .unwrap_or(false)
}

/// Print the end of the run (`end` is its terminal event) and the outcome.
fn conclude(
    run_id: &str,
    end: &Event,
    progress: &Progress,
    format: Format,
    mut outcome: Outcome,
) -> Outcome {
    match &end.kind {
        Some(event::Kind::RunCompleted(c)) => {
            let a = c.aggregate.unwrap_or_default();
            outcome.state = c.state;
            outcome.sum = a.sum;
            outcome.count = a.count;
            outcome.exit = if c.state == RunState::Succeeded as i32 {
                EXIT_OK
            } else {
                EXIT_FAILED
            };
            if format == Format::Text {
                let secs = if progress.started_ms > 0 {
                    (end.time_ms - progress.started_ms) as f64 / 1000.0
                } else {
                    0.0
                };
                let p = end.progress.unwrap_or_default();
                println!(
                    "run {run_id} {} in {secs:.2} s: {}/{} chunks done, {} dead, {} values",
                    state_name(c.state),
                    p.chunks_done,
                    p.chunks_total,
                    p.chunks_dead,
                    thousands(a.count as f64, 0)
                );
                if !c.message.is_empty() {
                    println!("{}", c.message);
                }
                if a.count == 0 {
                    println!("{}", aggregate_text(&a));
                } else if !end.outputs.is_empty()
                    && (end.outputs.len() > 1
                        || end.outputs[0].name != ttg_proto::space::DEFAULT_OUTPUT
                        || end.outputs[0]
                            .argmin
                            .as_ref()
                            .is_some_and(|p| p.values.first().is_some_and(|v| v.name != "p")))
                {
                    for line in crate::sweep::summary_lines(&end.outputs) {
                        println!("{line}");
                    }
                } else {
                    println!(
                        "sum {}  min {}  max {}  mean {}",
                        thousands(a.sum, 2),
                        a.min,
                        a.max,
                        thousands(a.mean, 4)
                    );
                }
            }
        }
        Some(event::Kind::RunCancelled(c)) => {
            outcome.state = RunState::Cancelled as i32;
            outcome.exit = EXIT_FAILED;
            if format == Format::Text {
                println!(
                    "run {run_id} CANCELLED{}",
                    if c.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", c.reason)
                    }
                );
            }
        }
        _ => {}
    }
    outcome
}
