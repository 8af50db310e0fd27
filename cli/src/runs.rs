//! `ttgctl runs`: the run listing, filtered by state, name and age, a page
//! at a time.

use ttg_proto::v1::{ListAgentsRequest, ListRunsRequest, RunState};

use crate::client::{self, CliError, CliResult, EXIT_OK};
use crate::output::{state_name, status_json, thousands, Format, Out};

/// A run state as a `--state` value.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateArg {
    /// Submitted, no chunk claimed yet.
    Queued,
    /// Chunks being computed.
    Running,
    /// Every chunk has a result.
    Succeeded,
    /// Ended with dead-lettered chunks.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl StateArg {
    fn state(self) -> RunState {
        match self {
            StateArg::Queued => RunState::Queued,
            StateArg::Running => RunState::Running,
            StateArg::Succeeded => RunState::Succeeded,
            StateArg::Failed => RunState::Failed,
            StateArg::Cancelled => RunState::Cancelled,
        }
    }
}

/// `ttgctl runs`'s flags.
#[derive(clap::Args, Debug)]
pub struct RunsArgs {
    /// Runs per page, 1..=1000.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only runs in these states (repeatable or comma-separated): queued, running, succeeded, failed, cancelled.
    #[arg(long = "state", value_delimiter = ',', value_enum)]
    pub states: Vec<StateArg>,
    /// Only runs whose name contains this text (case-insensitive).
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    /// Only runs submitted within this long, e.g. 2h or 7d.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Only runs submitted at least this long ago, e.g. 1d.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Continue from a previous page (the token it printed).
    #[arg(long, default_value = "", hide_default_value = true)]
    pub page_token: String,
    /// Follow every page to the end instead of printing one page.
    #[arg(long)]
    pub all: bool,
}

/// Print runs, newest first, a page (or with `all`, every page).
pub async fn runs(server: &str, q: RunsArgs, out: Out) -> CliResult<i32> {
    if q.limit == 0 || q.limit > 1_000 {
        return Err(CliError::usage(format!(
            "--limit must be in 1..=1000, got {}",
            q.limit
        )));
    }
    let mut c = client::control(server).await?;
    let mut req = ListRunsRequest {
        limit: q.limit,
        states: q.states.iter().map(|s| s.state() as i32).collect(),
        name_contains: q.name.clone(),
        max_age_s: q.since.map(|d| d.as_secs().max(1)).unwrap_or(0),
        min_age_s: q.older_than.map(|d| d.as_secs().max(1)).unwrap_or(0),
        page_token: q.page_token.clone(),
    };
    let mut runs = Vec::new();
    let next = loop {
        let page = c.list_runs(req.clone()).await?.into_inner();
        runs.extend(page.runs);
        if !q.all || page.next_page_token.is_empty() {
            break page.next_page_token;
        }
        req.page_token = page.next_page_token;
    };
    if out.quiet {
        for st in &runs {
            println!(
                "{}",
                st.spec
                    .as_ref()
                    .map(|s| s.run_id.as_str())
                    .unwrap_or_default()
            );
        }
        return Ok(EXIT_OK);
    }
    // -o json/yaml: the page and the token of the next one ("" at the end).
    let json = serde_json::json!({
        "runs": runs.iter().map(status_json).collect::<Vec<_>>(),
        "next_page_token": next,
    });
    if out.value(&json) {
        return Ok(EXIT_OK);
    }
    if !next.is_empty() {
        eprintln!("more runs: add --page-token {next} (or --all)");
    }
    // Share of agents now: the run's chunks in flight over every live
    // agent's slots.
    let slots: u64 = match c.list_agents(ListAgentsRequest {}).await {
        Ok(r) => r
            .into_inner()
            .agents
            .iter()
            .map(|a| u64::from(a.concurrency))
            .sum(),
        Err(_) => 0,
    };
    let wide = out.format == Format::Wide;
    let now = ttg_proto::now_ms();
    print!(
        "{:<20} {:<10} {:<12} {:>9} {:<6} {:>12} {:>16} {:>10} {:>14} {:>18}",
        "RUN",
        "STATE",
        "KERNEL",
        "SUBMITTED",
        "PRIO",
        "PARAMS",
        "CHUNKS DONE",
        "QUEUED",
        "IN FLIGHT",
        "SUM"
    );
    if wide {
        print!(
            " {:>8} {:>10} {:>12} {:>14}",
            "DEAD", "ELAPSED", "PARAMS/S", "QUEUE WAIT"
        );
    }
    println!("  NAME");
    for st in &runs {
        let spec = st.spec.clone().unwrap_or_default();
        let p = st.progress.unwrap_or_default();
        let prio = ttg_proto::sched::priority_name(spec.priority());
        let share = if slots > 0 && st.chunks_in_flight > 0 {
            format!(
                "{} ({:.0}%)",
                st.chunks_in_flight,
                100.0 * st.chunks_in_flight as f64 / slots as f64
            )
        } else {
            st.chunks_in_flight.to_string()
        };
        print!(
            "{:<20} {:<10} {:<12} {:>9} {:<6} {:>12} {:>16} {:>10} {:>14} {:>18}",
            spec.run_id,
            state_name(st.state),
            spec.kernel,
            ago(now, st.created_ms),
            prio,
            spec.params,
            format!("{}/{}", p.chunks_done, p.chunks_total),
            st.chunks_queued,
            share,
            thousands(st.aggregate.unwrap_or_default().sum, 2),
        );
        if wide {
            let elapsed = match (st.started_ms, st.finished_ms) {
                (0, _) => "-".to_string(),
                (s, 0) => seconds(now - s),
                (s, f) => seconds(f - s),
            };
            print!(
                " {:>8} {:>10} {:>12} {:>14}",
                p.chunks_dead,
                elapsed,
                thousands(st.params_per_second, 0),
                if st.claims > 0 {
                    format!("{:.0} ms", st.queue_wait_mean_ms)
                } else {
                    "-".into()
                }
            );
        }
        println!("  {}", spec.name);
    }
    Ok(EXIT_OK)
}

/// `12s`, `5m`, `3h`, `2d` since `ms` (ms since epoch), or `-`.
fn ago(now: i64, ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let s = ((now - ms).max(0) / 1000) as u64;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn seconds(ms: i64) -> String {
    format!("{:.1} s", ms.max(0) as f64 / 1000.0)
}
