//! `ttgctl status RUN`, `ttgctl runs`, `ttgctl agents` and `ttgctl cancel RUN`.

use ttg_proto::v1::{
    CancelRequest, ListAgentsRequest, ListRunsRequest, RetryRequest, StatusRequest,
};

use crate::client::{self, CliResult, EXIT_OK};
use crate::output::{agent_json, state_name, status_json, status_text, thousands, Format};

/// Print one run's status.
pub async fn status(server: &str, run_id: &str, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let st = c
        .status(StatusRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner();
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status_json(&st)).unwrap_or_default()
        ),
        Format::Text | Format::Csv => print!("{}", status_text(&st)),
    }
    Ok(EXIT_OK)
}

/// Print the newest runs.
pub async fn runs(server: &str, limit: u32, format: Format) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let runs = c
        .list_runs(ListRunsRequest { limit })
        .await?
        .into_inner()
        .runs;
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
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({"run_id": run_id, "state": state_name(r.state)})
        ),
        Format::Text | Format::Csv => println!("run {run_id} {}", state_name(r.state)),
    }
    Ok(EXIT_OK)
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
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({"run_id": run_id, "chunks_requeued": r.chunks_requeued, "state": state_name(r.state)})
        ),
        Format::Text | Format::Csv => println!(
            "run {run_id}: {} dead chunks re-queued; state {}",
            r.chunks_requeued,
            state_name(r.state)
        ),
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
