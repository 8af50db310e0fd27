//! HELP text and type of every metric the server exports, registered with
//! the Prometheus recorder once it is installed: a scrape then shows
//! `# HELP` and `# TYPE` for each (a test fails on one without).

/// Describe every server metric to the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "ttg_chunks_completed_total",
        "Chunks whose result was stored and counted (first result), installation-wide"
    );
    describe_counter!(
        "ttg_chunks_duplicate_total",
        "Completions of chunks that already had a result (ignored), installation-wide"
    );
    describe_counter!(
        "ttg_chunk_attempts_failed_total",
        "Failed chunk attempts (kernel errors and agent deaths), installation-wide"
    );
    describe_counter!(
        "ttg_chunks_reclaimed_total",
        "Deliveries taken back from agents that died or froze, installation-wide"
    );
    describe_counter!(
        "ttg_chunks_dead_lettered_total",
        "Chunks that used all their attempts and went to the dead-letter stream"
    );
    describe_counter!(
        "ttg_server_writes_unreplicated_total",
        "With --redis-wait-replicas: Submits, Cancels, Retries and Deletes that fewer replicas than asked acknowledged within --redis-wait-timeout (or whose WAIT failed); the request still succeeded"
    );
    describe_counter!(
        "ttg_chunks_requeued_by_audit_total",
        "Chunks the audit found neither done, dead nor queued and re-queued (should stay 0)"
    );
    describe_counter!(
        "ttg_chunks_requeued_by_retry_total",
        "Purged chunks of fail-fast runs re-queued by retry"
    );
    describe_gauge!(
        "ttg_runs_in_flight",
        "Runs QUEUED or RUNNING, installation-wide"
    );
    describe_gauge!("ttg_runs", "Runs by state, among the newest 1,000");
    describe_gauge!("ttg_runs_stored", "Runs whose data Redis holds");
    describe_gauge!(
        "ttg_queue_entries",
        "Task entries in a kernel's tasks stream"
    );
    describe_gauge!(
        "ttg_queue_pending",
        "Task entries delivered to agents and not yet settled, per kernel"
    );
    describe_gauge!(
        "ttg_queue_lag",
        "Chunks not yet handed to any agent (queued in the scheduler), per kernel: what autoscaling watches"
    );
    describe_gauge!(
        "ttg_chunks_queued",
        "Chunks of active runs queued in the scheduler, per kernel and priority"
    );
    describe_gauge!(
        "ttg_chunks_in_flight",
        "Chunks of active runs claimed by agents and not yet settled, per kernel and priority"
    );
    describe_gauge!(
        "ttg_redis_used_memory_bytes",
        Unit::Bytes,
        "Redis used_memory"
    );
    describe_gauge!(
        "ttg_redis_maxmemory_bytes",
        Unit::Bytes,
        "Redis maxmemory (0: no limit)"
    );
    describe_gauge!(
        "ttg_sessions_connected",
        "Agent sessions this server replica holds"
    );
    describe_histogram!(
        "ttg_submit_seconds",
        Unit::Seconds,
        "Submit handling time, until every task is in Redis"
    );
    describe_histogram!(
        "ttg_claim_to_ack_seconds",
        Unit::Seconds,
        "Claim to completion of each chunk, as the agents report it"
    );
    describe_histogram!(
        "ttg_reclaim_seconds",
        Unit::Seconds,
        "Time from an agent's death being noticed to its chunks being back in the queue"
    );
}
