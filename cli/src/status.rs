//! One run's commands (`status`, `cancel`, `retry`, `delete`), the run
//! listing (`runs`) and the fleet's (`agents`, `kernels`).

use ttg_proto::v1::{
    CancelRequest, DeleteRequest, ListAgentsRequest, ListRunsRequest, RetryRequest, RunState,
};

use crate::client::{self, CliError, CliResult, EXIT_OK};
use crate::output::{agent_json, state_name, status_json, status_text, thousands, Format};

/// Print one run's status.
pub async fn status(server: &str, run_id: &str, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let st = client::run_status(&mut c, run_id).await?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status_json(&st)).unwrap_or_default()
        ),
        Format::Text | Format::Csv => print!("{}", status_text(&st)),
    }
    Ok(EXIT_OK)
}

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

/// One run, by id (`status`, `retry`, `delete`).
#[derive(clap::Args, Debug)]
pub struct RunArg {
    /// Run id.
    pub run: String,
}

/// `ttgctl cancel`'s arguments.
#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// Run id.
    pub run: String,
    /// Reason, recorded in the run's events (default none).
    #[arg(long, default_value = "")]
    pub reason: String,
}

/// `ttgctl runs`'s flags.
#[derive(clap::Args, Debug)]
pub struct RunsArgs {
    /// Runs per page, 1..=1000 (default 50).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only runs in these states (repeatable or comma-separated): queued, running, succeeded, failed, cancelled.
    #[arg(long = "state", value_delimiter = ',', value_enum)]
    pub states: Vec<StateArg>,
    /// Only runs whose name contains this text (case-insensitive).
    #[arg(long, default_value = "")]
    pub name: String,
    /// Only runs submitted within this long, e.g. 2h or 7d.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Only runs submitted at least this long ago, e.g. 1d.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<std::time::Duration>,
    /// Continue from a previous page (the token it printed).
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Follow every page to the end instead of printing one page.
    #[arg(long)]
    pub all: bool,
}

/// Print runs, newest first, a page (or with `all`, every page).
pub async fn runs(server: &str, q: RunsArgs, format: Format) -> CliResult<i32> {
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
    if !next.is_empty() && format == Format::Text {
        eprintln!("more runs: add --page-token {next} (or --all)");
    }
    match format {
        Format::Json => {
            let v: Vec<_> = runs.iter().map(status_json).collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Text | Format::Csv => {
            println!(
                "{:<18} {:<10} {:>12} {:>16} {:>18}  NAME",
                "RUN", "STATE", "PARAMS", "CHUNKS DONE", "SUM"
            );
            for st in &runs {
                let spec = st.spec.clone().unwrap_or_default();
                let p = st.progress.unwrap_or_default();
                println!(
                    "{:<18} {:<10} {:>12} {:>16} {:>18}  {}",
                    spec.run_id,
                    state_name(st.state),
                    spec.params,
                    format!("{}/{}", p.chunks_done, p.chunks_total),
                    thousands(st.aggregate.unwrap_or_default().sum, 2),
                    spec.name
                );
            }
        }
    }
    Ok(EXIT_OK)
}

/// Delete a finished run's data.
pub async fn delete(server: &str, run_id: &str, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let r = c
        .delete(DeleteRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner();
    report(
        format,
        serde_json::json!({"run_id": run_id, "deleted": true, "state": state_name(r.state)}),
        format!("run {run_id} deleted (it was {})", state_name(r.state)),
    )
}

/// Print the agents with a live session.
pub async fn agents(server: &str, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let agents = c
        .list_agents(ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    match format {
        Format::Json => {
            let v: Vec<_> = agents.iter().map(agent_json).collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Text | Format::Csv => {
            println!(
                "{:<28} {:<16} {:>11} {:>5}  {:<20} SERVER",
                "AGENT", "HOST", "CONCURRENCY", "HELD", "KERNELS"
            );
            for a in &agents {
                println!(
                    "{:<28} {:<16} {:>11} {:>5}  {:<20} {}",
                    a.agent_id,
                    a.host,
                    a.concurrency,
                    a.held.len(),
                    a.kernels.join(","),
                    a.server_id
                );
            }
        }
    }
    Ok(EXIT_OK)
}

/// Cancel a run.
pub async fn cancel(server: &str, run_id: &str, reason: &str, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let r = c
        .cancel(CancelRequest {
            run_id: run_id.to_string(),
            reason: reason.to_string(),
        })
        .await?
        .into_inner();
    report(
        format,
        serde_json::json!({"run_id": run_id, "state": state_name(r.state)}),
        format!("run {run_id} {}", state_name(r.state)),
    )
}

/// Re-queue a run's dead chunks with fresh attempts.
pub async fn retry(server: &str, run_id: &str, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let r = c
        .retry(RetryRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner();
    report(
        format,
        serde_json::json!({"run_id": run_id, "chunks_requeued": r.chunks_requeued, "state": state_name(r.state)}),
        format!(
            "run {run_id}: {} chunks re-queued (dead, or stopped by fail-fast); state {}",
            r.chunks_requeued,
            state_name(r.state)
        ),
    )
}

/// Print what a command did to a run: `json` with -o json, else `text`.
fn report(format: Format, json: serde_json::Value, text: String) -> CliResult<i32> {
    match format {
        Format::Json => println!("{json}"),
        Format::Text | Format::Csv => println!("{text}"),
    }
    Ok(EXIT_OK)
}

/// Print the kernels live agents offer, with their arguments.
pub async fn kernels(server: &str, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let kernels = c
        .list_kernels(ttg_proto::v1::ListKernelsRequest {})
        .await?
        .into_inner()
        .kernels;
    match format {
        Format::Json => {
            let v: Vec<_> = kernels
                .iter()
                .map(|k| {
                    let d = k.decl.clone().unwrap_or_default();
                    serde_json::json!({
                        "name": d.name, "help": d.help, "agents": k.agent_ids,
                        "args": d.args.iter().map(|a| serde_json::json!({
                            "name": a.name, "type": a.r#type, "default": a.default,
                            "min": a.min, "max": a.max, "required": a.required, "help": a.help,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Text | Format::Csv => {
            if kernels.is_empty() {
                println!("no agent is connected");
            }
            for k in &kernels {
                let d = k.decl.clone().unwrap_or_default();
                println!("{}  ({} agents)\n    {}", d.name, k.agent_ids.len(), d.help);
                for a in &d.args {
                    let range = match a.r#type.as_str() {
                        "string" => format!("text, at most {} bytes", a.max),
                        "int" => format!("int in {}..={}", a.min, a.max),
                        _ => format!("number in {}..={}", a.min, a.max),
                    };
                    let dflt = if a.required {
                        "required".to_string()
                    } else if a.default.is_empty() {
                        "optional".to_string()
                    } else {
                        format!("default {}", a.default)
                    };
                    println!("    --arg {}=…   {range}, {dflt}: {}", a.name, a.help);
                }
            }
        }
    }
    Ok(EXIT_OK)
}
