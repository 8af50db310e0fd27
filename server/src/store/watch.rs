//! Watch: a run's events from any event id to its end, resumable.

use super::*;

/// Longest a Watch blocks in XREAD before it checks the run and the client.
const WATCH_BLOCK: Duration = Duration::from_millis(1_000);

/// After sending events, a Watch waits this long before reading again, so
/// a busy run's events reach it in batches (one XREAD and one flush for
/// many) rather than one round trip each; the first event after a quiet
/// spell still arrives at once (XREAD BLOCK returns on it).
const WATCH_COALESCE: Duration = Duration::from_millis(2);

/// A Watch attaches the run's per-output summaries (best points so far) to
/// a ChunkCompleted event at most this often, and always to the terminal
/// event: one read of the run hash per watcher per interval.
const WATCH_SUMMARY_EVERY: Duration = Duration::from_millis(250);

impl Store {
    /// Stream a run's events after `after` into `tx` until the run ends (or,
    /// not `follow`ing, until the last event stored now), the receiver goes
    /// away or `stop` is cancelled. The first error ends it.
    pub async fn watch(
        &self,
        run_id: &str,
        after: &str,
        follow: bool,
        tx: mpsc::Sender<Result<Event>>,
        stop: CancellationToken,
    ) {
        let r = if follow {
            self.watch_inner(run_id, after, &tx, &stop).await
        } else {
            self.events_until_now(run_id, after, &tx).await
        };
        if let Err(e) = r {
            let _ = tx.send(Err(e)).await;
        }
    }

    /// The run's events after `after` up to the last one stored now, a page
    /// at a time (no blocking read: the stream ends there).
    async fn events_until_now(
        &self,
        run_id: &str,
        after: &str,
        tx: &mpsc::Sender<Result<Event>>,
    ) -> Result<()> {
        let key = self.keys_of(run_id)?.events(run_id);
        let mut c = self.conn();
        let tail: redis::streams::StreamRangeReply = self
            .timed(
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut c),
            )
            .await?;
        let Some(end) = tail.ids.first().map(|e| e.id.clone()) else {
            return Ok(());
        };
        let mut from = if after.is_empty() || after == "0" {
            "-".to_string()
        } else {
            format!("({after}")
        };
        loop {
            let page: redis::streams::StreamRangeReply = self
                .timed(
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(&from)
                        .arg(&end)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c),
                )
                .await?;
            let Some(last) = page.ids.last().map(|e| e.id.clone()) else {
                return Ok(());
            };
            for e in page.ids {
                match decode_events(&e.id, &e.map) {
                    Ok(evs) => {
                        // The first entry may be a batch that `after` is inside.
                        for ev in evs.into_iter().filter(|ev| event_after(&ev.id, after)) {
                            if tx.send(Ok(ev)).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(run = %run_id, id = %e.id, error = %err, "corrupt event skipped");
                    }
                }
            }
            if last == end {
                return Ok(());
            }
            from = format!("({last}");
        }
    }

    async fn watch_inner(
        &self,
        run_id: &str,
        after: &str,
        tx: &mpsc::Sender<Result<Event>>,
        stop: &CancellationToken,
    ) -> Result<()> {
        let events_key = self.keys_of(run_id)?.events(run_id);
        let mut last = if after.is_empty() {
            "0-0".to_string()
        } else {
            after.to_string()
        };
        // XREAD BLOCK holds its connection: give each watcher its own so it
        // never stalls the shared one.
        let mut blocking = self.timed(self.target.blocking(WATCH_BLOCK)).await?;
        let mut summarised: Option<std::time::Instant> = None;
        loop {
            if stop.is_cancelled() {
                return Err(Error::ShuttingDown);
            }
            if tx.is_closed() {
                return Ok(());
            }
            let reply: Option<StreamReadReply> = self
                .timed(
                    redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(1000)
                        .arg("BLOCK")
                        .arg(WATCH_BLOCK.as_millis() as u64)
                        .arg("STREAMS")
                        .arg(&events_key)
                        .arg(&last)
                        .query_async(&mut blocking),
                )
                .await?;
            let entries: Vec<_> = reply
                .map(|r| r.keys)
                .unwrap_or_default()
                .into_iter()
                .flat_map(|k| k.ids)
                .collect();
            let nothing_new = entries.is_empty();
            if self
                .forward(run_id, entries, &mut last, &mut summarised, tx)
                .await?
                == Forwarded::End
            {
                return Ok(());
            }
            if nothing_new && self.ended_before(run_id, &last).await? {
                return Ok(());
            }
            if !nothing_new {
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_COALESCE) => {}
                    _ = stop.cancelled() => return Err(Error::ShuttingDown),
                }
            }
        }
    }

    /// Send `entries` to the watcher (skipping corrupt ones); `End` once the
    /// watcher is gone or a terminal event was sent and the run is still
    /// finished (a FAILED run that was retried goes on).
    async fn forward(
        &self,
        run_id: &str,
        entries: Vec<redis::streams::StreamId>,
        last: &mut String,
        summarised: &mut Option<std::time::Instant>,
        tx: &mpsc::Sender<Result<Event>>,
    ) -> Result<Forwarded> {
        let mut events = Vec::with_capacity(entries.len());
        // Events up to the cursor were sent (or not asked for): the first
        // entry read may be a batch the cursor is inside.
        let cursor = last.clone();
        for entry in entries {
            *last = entry.id.clone();
            match decode_events(&entry.id, &entry.map) {
                Ok(evs) => events.extend(evs.into_iter().filter(|ev| event_after(&ev.id, &cursor))),
                Err(e) => {
                    tracing::warn!(run = %run_id, id = %entry.id, error = %e, "corrupt event skipped");
                }
            }
        }
        // The best points so far ride on the batch's last completion (at
        // most every WATCH_SUMMARY_EVERY) and on a terminal event.
        let due = summarised.is_none_or(|t| t.elapsed() >= WATCH_SUMMARY_EVERY);
        if let Some(ev) = events.iter_mut().rev().find(|e| {
            is_terminal(e) || (due && matches!(e.kind, Some(event::Kind::ChunkCompleted(_))))
        }) {
            ev.outputs = self.summaries(run_id).await?;
            *summarised = Some(std::time::Instant::now());
        }
        for ev in events {
            let terminal = is_terminal(&ev);
            if tx.send(Ok(ev)).await.is_err() {
                return Ok(Forwarded::End);
            }
            if terminal && self.run_state(run_id).await?.is_none_or(is_finished) {
                return Ok(Forwarded::End);
            }
        }
        Ok(Forwarded::More)
    }

    /// With nothing new after `last`: whether the watch is over — the run
    /// ended before `last` (checked once more without blocking, in case the
    /// terminal event landed meanwhile), or NotFound if it is gone.
    async fn ended_before(&self, run_id: &str, last: &str) -> Result<bool> {
        match self.run_state(run_id).await? {
            None => Err(self.not_found(run_id).await),
            Some(s) if is_finished(s) => {
                let mut c = self.conn();
                let more: Option<StreamReadReply> = self
                    .timed(
                        redis::cmd("XREAD")
                            .arg("COUNT")
                            .arg(1)
                            .arg("STREAMS")
                            .arg(self.keys_of(run_id)?.events(run_id))
                            .arg(last)
                            .query_async(&mut c),
                    )
                    .await?;
                Ok(more
                    .map(|r| r.keys.iter().all(|k| k.ids.is_empty()))
                    .unwrap_or(true))
            }
            Some(_) => Ok(false),
        }
    }

    /// Per-output summaries of a run now (empty if it is gone).
    async fn summaries(&self, run_id: &str) -> Result<Vec<ttg_proto::v1::OutputSummary>> {
        let h = match self.run_hash(run_id).await {
            Ok(h) => h,
            Err(Error::RunNotFound(_) | Error::RunGone { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let Some(spec) = h.get("spec").and_then(|b| decode_spec(b).ok()) else {
            return Ok(Vec::new());
        };
        Ok(ttg_proto::records::output_summaries(&h, &spec))
    }

    /// The run's state in its hash; None if the run is gone.
    async fn run_state(&self, run_id: &str) -> Result<Option<RunState>> {
        let mut c = self.conn();
        let state: Option<String> = self
            .timed(
                redis::cmd("HGET")
                    .arg(self.keys_of(run_id)?.run(run_id))
                    .arg("state")
                    .query_async(&mut c),
            )
            .await?;
        Ok(state.map(|s| parse_state(&s)))
    }
}

/// Whether a watch goes on after forwarding a batch of events.
#[derive(Debug, PartialEq, Eq)]
enum Forwarded {
    More,
    End,
}
