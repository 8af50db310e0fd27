//! HELP text and type of every metric the agent exports, registered with
//! the Prometheus recorder once it is installed.

/// Describe every agent metric to the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "ttg_agent_chunks_computed_total",
        "Chunks this agent computed and completed"
    );
    describe_counter!(
        "ttg_agent_chunks_lost_total",
        "Chunks reclaimed from this agent while it held them (it looked dead)"
    );
    describe_counter!(
        "ttg_agent_completions_unreplicated_total",
        "Completion calls that fewer replicas than --redis-wait-replicas acknowledged within --redis-wait-timeout"
    );
    describe_counter!(
        "ttg_agent_duplicates_total",
        "Completions of chunks that already had a result"
    );
    describe_counter!(
        "ttg_agent_kernel_errors_total",
        "Chunk attempts whose kernel failed"
    );
    describe_gauge!("ttg_agent_in_flight", "Chunks this agent holds right now");
    describe_histogram!(
        "ttg_agent_queue_wait_seconds",
        Unit::Seconds,
        "Time a chunk this agent claimed waited in its run's queue, from submit (or its re-queue) to the claim, by kernel"
    );
    describe_counter!(
        "ttg_agent_exec_workers_started_total",
        "exec mode=worker programs started (handshake answered)"
    );
    describe_counter!(
        "ttg_agent_exec_worker_restarts_total",
        "exec mode=worker programs killed by a failure (reason: crash, timeout, cancel, start); the next chunk starts a fresh one"
    );
    describe_gauge!(
        "ttg_agent_exec_workers_live",
        "exec mode=worker programs alive or starting (at most --concurrency)"
    );
    describe_histogram!(
        "ttg_agent_exec_worker_start_seconds",
        Unit::Seconds,
        "Time an exec mode=worker program took to start and answer the handshake"
    );
    describe_histogram!(
        "ttg_agent_compute_seconds",
        Unit::Seconds,
        "Time a kernel spent on one chunk"
    );
}
