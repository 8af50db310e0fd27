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
        "ttg_agent_duplicates_total",
        "Completions of chunks that already had a result"
    );
    describe_counter!(
        "ttg_agent_kernel_errors_total",
        "Chunk attempts whose kernel failed"
    );
    describe_gauge!("ttg_agent_in_flight", "Chunks this agent holds right now");
    describe_histogram!(
        "ttg_agent_compute_seconds",
        Unit::Seconds,
        "Time a kernel spent on one chunk"
    );
}
