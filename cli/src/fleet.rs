//! The fleet: `ttgctl agents` and `ttgctl kernels`.

use ttg_proto::v1::ListAgentsRequest;

use crate::client::{self, CliResult, EXIT_OK};
use crate::output::{agent_json, Format};

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
        _ => {
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
                            "choices": a.choices,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        _ => {
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
                        "choice" => format!("one of {}", a.choices.join(", ")),
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
