//! Formatting runs, agents and events for people (text) and programs (JSON).

use serde_json::Value;
pub use ttg_proto::json::{agent_json, event_json, state_name, status_json};
use ttg_proto::v1::{Aggregate, RunStatus};

/// Output format of read commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// Text, lists with more columns.
    Wide,
    /// JSON.
    Json,
    /// YAML (the same fields as JSON).
    Yaml,
    /// CSV (`results` only).
    Csv,
    /// JSON lines, one object per point (`results` only).
    Jsonl,
    /// Apache Parquet, with --file (`results` only).
    Parquet,
}

/// How a command prints: the format, and `-q` (ids only).
#[derive(Clone, Copy, Debug)]
pub struct Out {
    /// `-o`.
    pub format: Format,
    /// `-q`.
    pub quiet: bool,
}

impl Out {
    /// JSON or YAML: one document of fields.
    pub fn structured(&self) -> bool {
        matches!(self.format, Format::Json | Format::Yaml)
    }

    /// Print `v` as JSON (pretty) or YAML; false (nothing printed) for a
    /// text format.
    pub fn value(&self, v: &Value) -> bool {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            Format::Yaml => print!("{}", serde_yaml_ng::to_string(v).unwrap_or_default()),
            _ => return false,
        }
        true
    }
}

/// `1234567.891` → `1,234,567.89`.
pub fn thousands(v: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s
        .split_once('.')
        .map(|(a, b)| (a, Some(b)))
        .unwrap_or((s.as_str(), None));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    if v < 0.0 && v.abs() >= 0.5 * 10f64.powi(-(decimals as i32)) {
        out.insert(0, '-');
    }
    out
}

/// A run's status as text lines.
pub fn status_text(st: &RunStatus) -> String {
    let spec = st.spec.clone().unwrap_or_default();
    let p = st.progress.unwrap_or_default();
    let a = st.aggregate.unwrap_or_default();
    let mut out = format!(
        "run        {}{}\nstate      {}\nkernel     {} {}\nparams     {} in chunks of {}\nchunks     {} done, {} dead, {}{} in flight, of {}\n",
        spec.run_id,
        if spec.name.is_empty() { String::new() } else { format!(" ({})", spec.name) },
        state_name(st.state),
        spec.kernel,
        spec.args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
        spec.params,
        spec.chunk_size,
        p.chunks_done,
        p.chunks_dead,
        if p.chunks_purged > 0 {
            format!("{} purged (never computed), ", p.chunks_purged)
        } else {
            String::new()
        },
        st.chunks_in_flight,
        p.chunks_total,
    );
    out.push_str(&format!(
        "schedule   {} priority{}{}, {} queued{}\n",
        ttg_proto::sched::priority_name(spec.priority()),
        if spec.max_in_flight > 0 {
            format!(", at most {} in flight", spec.max_in_flight)
        } else {
            String::new()
        },
        if spec.weight > 1 {
            format!(", weight {}", spec.weight)
        } else {
            String::new()
        },
        st.chunks_queued,
        if st.claims > 0 {
            format!(
                "; waited {:.0} ms on average (longest {} ms) from queue to claim; used {} of agent time",
                st.queue_wait_mean_ms,
                st.queue_wait_max_ms,
                agent_time(st.agent_ms)
            )
        } else {
            String::new()
        }
    ));
    out.push_str(&format!("aggregate  {}\n", aggregate_text(&a)));
    if let Some(space) = spec
        .space
        .as_ref()
        .and_then(|w| ttg_proto::space::Space::from_wire(w).ok())
    {
        out.push_str(&format!(
            "space      {}{}\n",
            space.names().join(" × "),
            space
                .sample
                .map(|s| format!(" (random search, seed {})", s.seed))
                .unwrap_or_default()
        ));
    }
    if spec.space.is_some() || !spec.outputs.is_empty() {
        for line in crate::sweep::summary_lines(&st.outputs) {
            out.push_str(&format!("output     {line}\n"));
        }
    }
    if st.started_ms > 0 {
        let end = if st.finished_ms > 0 {
            st.finished_ms
        } else {
            ttg_proto::now_ms()
        };
        out.push_str(&format!(
            "elapsed    {:.2} s, {} params/s\n",
            (end - st.started_ms) as f64 / 1000.0,
            thousands(st.params_per_second, 0)
        ));
    }
    if st.expires_ms > 0 {
        let left = (st.expires_ms - ttg_proto::now_ms()).max(0) as u64;
        out.push_str(&format!(
            "expires    {} (in {}; ttgctl delete removes it now)\n",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(st.expires_ms as u64)
            ),
            humantime::format_duration(std::time::Duration::from_secs(left / 1000))
        ));
    }
    if !st.message.is_empty() {
        out.push_str(&format!("note       {}\n", st.message));
    }
    for d in &st.dead_chunks {
        out.push_str(&format!(
            "dead       chunk {} after attempt {}: {}\n",
            d.chunk_index, d.attempt, d.error
        ));
    }
    if p.chunks_dead > st.dead_chunks.len() as u64 {
        out.push_str(&format!(
            "dead       … and {} more\n",
            p.chunks_dead - st.dead_chunks.len() as u64
        ));
    }
    if p.chunks_dead > 0 {
        out.push_str(&format!("retry      ttgctl retry {}\n", spec.run_id));
    }
    out
}

/// An aggregate as one line of text; "no values" when nothing was counted
/// (a sum, min and max of 0 would read as real values).
pub fn aggregate_text(a: &Aggregate) -> String {
    if a.count == 0 {
        return "no values".to_string();
    }
    format!(
        "count {}, sum {}, min {}, max {}, mean {}",
        a.count,
        thousands(a.sum, 2),
        a.min,
        a.max,
        thousands(a.mean, 4)
    )
}

/// Agent time as a person reads it: `850 ms`, `12.4 s`, `3.2 min`, `5.1 h`.
fn agent_time(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=119_999 => format!("{:.1} s", ms as f64 / 1e3),
        120_000..=7_199_999 => format!("{:.1} min", ms as f64 / 60e3),
        _ => format!("{:.1} h", ms as f64 / 3_600e3),
    }
}

#[cfg(test)]
mod tests {
    use super::agent_time;

    #[test]
    fn agent_time_reads_in_the_unit_a_person_expects() {
        assert_eq!(agent_time(0), "0 ms");
        assert_eq!(agent_time(341), "341 ms");
        assert_eq!(agent_time(12_400), "12.4 s");
        assert_eq!(agent_time(192_000), "3.2 min");
        assert_eq!(agent_time(18_360_000), "5.1 h");
    }
}
