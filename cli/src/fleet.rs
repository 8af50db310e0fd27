//! The fleet: `ttgctl agents` and `ttgctl kernels`.

use ttg_proto::v1::ListAgentsRequest;

use crate::client::{self, CliResult, EXIT_OK};
use crate::output::{agent_json, Format, Out};

/// Print the agents with a live session.
pub async fn agents(server: &str, out: Out) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let agents = c
        .list_agents(ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    if out.quiet {
        for a in &agents {
            println!("{}", a.agent_id);
        }
        return Ok(EXIT_OK);
    }
    match out.format {
        Format::Json | Format::Yaml => {
            out.value(&serde_json::Value::Array(
                agents.iter().map(agent_json).collect(),
            ));
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
pub async fn kernels(server: &str, out: Out) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    let kernels = c
        .list_kernels(ttg_proto::v1::ListKernelsRequest {})
        .await?
        .into_inner()
        .kernels;
    if out.quiet {
        for k in &kernels {
            println!(
                "{}",
                k.decl.as_ref().map(|d| d.name.as_str()).unwrap_or_default()
            );
        }
        return Ok(EXIT_OK);
    }
    match out.format {
        Format::Json | Format::Yaml => {
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
            out.value(&serde_json::Value::Array(v));
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
