//! Watch: a run's events from any event id to its end, resumable.

use super::*;

/// Longest a Watch blocks in XREAD before it checks the run and the client.
const WATCH_BLOCK: Duration = Duration::from_millis(1_000);

impl Store {
    /// Stream a run's events after `after` into `tx` until the run ends, the
    /// receiver goes away or `stop` is cancelled. The first error ends it.
    pub async fn watch(
        &self,
        run_id: &str,
        after: &str,
        tx: mpsc::Sender<Result<Event>>,
        stop: CancellationToken,
    ) {
        if let Err(e) = self.watch_inner(run_id, after, &tx, &stop).await {
            let _ = tx.send(Err(e)).await;
        }
    }

    async fn watch_inner(
        &self,
        run_id: &str,
        after: &str,
        tx: &mpsc::Sender<Result<Event>>,
        stop: &CancellationToken,
    ) -> Result<()> {
        let events_key = self.keys.events(run_id);
        let run_key = self.keys.run(run_id);
        let mut last = if after.is_empty() {
            "0-0".to_string()
        } else {
            after.to_string()
        };
        // XREAD BLOCK holds its connection: give each watcher its own so it
        // never stalls the shared one.
        let mut blocking = self
            .timed(redis_conn::blocking(&self.client, WATCH_BLOCK))
            .await?;
        let mut c = self.conn();
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
            let entries = reply.map(|r| r.keys).unwrap_or_default();
            let mut got_any = false;
            for key in entries {
                for entry in key.ids {
                    got_any = true;
                    last = entry.id.clone();
                    let Some(Value::BulkString(bytes)) = entry.map.get(EVENT_FIELD) else {
                        tracing::warn!(run = %run_id, id = %entry.id, "event without payload skipped");
                        continue;
                    };
                    let ev = match decode_event(&entry.id, bytes) {
                        Ok(ev) => ev,
                        Err(e) => {
                            tracing::warn!(run = %run_id, id = %entry.id, error = %e, "corrupt event skipped");
                            continue;
                        }
                    };
                    let terminal = is_terminal(&ev);
                    if tx.send(Ok(ev)).await.is_err() {
                        return Ok(());
                    }
                    // A FAILED run that was retried goes on: end only if the
                    // run is still finished now.
                    if terminal {
                        let state: Option<String> = self
                            .timed(
                                redis::cmd("HGET")
                                    .arg(&run_key)
                                    .arg("state")
                                    .query_async(&mut c),
                            )
                            .await?;
                        if state.is_none_or(|s| is_finished(parse_state(&s))) {
                            return Ok(());
                        }
                    }
                }
            }
            if !got_any {
                // Nothing new: the run may have ended before `after`, or been
                // deleted. Otherwise keep waiting.
                let state: Option<String> = self
                    .timed(
                        redis::cmd("HGET")
                            .arg(&run_key)
                            .arg("state")
                            .query_async(&mut c),
                    )
                    .await?;
                match state {
                    None => return Err(self.not_found(run_id).await),
                    Some(s) if is_finished(parse_state(&s)) => {
                        // The terminal event may have landed between XREAD and
                        // HGET: read once more without blocking before ending.
                        let more: Option<StreamReadReply> = self
                            .timed(
                                redis::cmd("XREAD")
                                    .arg("COUNT")
                                    .arg(1)
                                    .arg("STREAMS")
                                    .arg(&events_key)
                                    .arg(&last)
                                    .query_async(&mut c),
                            )
                            .await?;
                        if more
                            .map(|r| r.keys.iter().all(|k| k.ids.is_empty()))
                            .unwrap_or(true)
                        {
                            return Ok(());
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }
}
