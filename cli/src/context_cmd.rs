//! `ttgctl context list|use|show|set|delete`: the contexts of the config
//! file (see [`crate::context`]).

use serde_json::json;

use crate::client::{parse_server, CliError, CliResult, ConnFlags, EXIT_OK};
use crate::context::{self, Context};
use crate::output::Out;

/// `ttgctl context`'s subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// List the contexts; `*` marks the current one.
    List,
    /// Make a context the current one.
    Use {
        /// Context name.
        name: String,
    },
    /// Show a context's settings (never its token) [default: the current one].
    Show {
        /// Context name.
        name: Option<String>,
    },
    /// Add or change a context: `ttgctl context set prod https://ttg.example:443 --token-file ~/.ttg/prod.token --ca ca.pem`.
    Set {
        /// Context name.
        name: String,
        /// Server: host:port, http://host:port or https://host:port.
        #[arg(value_parser = parse_server)]
        url: String,
        /// Make it the current context too.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Remove a context.
    Delete {
        /// Context name.
        name: String,
    },
}

/// Run a `context` subcommand. `set` takes the connection flags given
/// (`--token-file`, `--ca`, `--cert`, `--key`); an inline `--token` is
/// refused: it would sit on a command line and in the file.
pub fn run(cmd: Cmd, flags: &ConnFlags, out: Out) -> CliResult<i32> {
    match cmd {
        Cmd::List => list(out),
        Cmd::Use { name } => {
            context::update(|c| {
                if !c.contexts.contains_key(&name) {
                    return Err(unknown(&name, c));
                }
                c.current_context = Some(name.clone());
                Ok(())
            })?;
            if !out.quiet {
                println!("current context: {name}");
            }
            Ok(EXIT_OK)
        }
        Cmd::Show { name } => show(name, out),
        Cmd::Set {
            name,
            url,
            make_current,
        } => {
            if flags.token.is_some() {
                return Err(CliError::usage(
                    "context set takes --token-file, not --token: keep the token in a file (mode 600) so it is on no command line",
                ));
            }
            if !valid_name(&name) {
                return Err(CliError::usage(format!(
                    "context name {name:?}: use 1..=64 letters, digits, '.', ':', '_' or '-'"
                )));
            }
            let abs = |p: &Option<std::path::PathBuf>| -> CliResult<Option<std::path::PathBuf>> {
                p.as_ref()
                    .map(|p| {
                        std::path::absolute(p)
                            .map_err(|e| CliError::usage(format!("{}: {e}", p.display())))
                    })
                    .transpose()
            };
            let ctx = Context {
                server: url,
                token_file: abs(&flags.token_file)?,
                token: None,
                ca: abs(&flags.ca)?,
                cert: abs(&flags.cert)?,
                key: abs(&flags.key)?,
                up: None,
            };
            let created = context::update(|c| {
                let created = c.contexts.insert(name.clone(), ctx).is_none();
                if make_current || c.current_context.is_none() {
                    c.current_context = Some(name.clone());
                }
                Ok(created)
            })?;
            if !out.quiet {
                println!(
                    "context {name} {}",
                    if created { "added" } else { "updated" }
                );
            }
            Ok(EXIT_OK)
        }
        Cmd::Delete { name } => {
            context::update(|c| {
                if c.contexts.remove(&name).is_none() {
                    return Err(unknown(&name, c));
                }
                if c.current_context.as_deref() == Some(name.as_str()) {
                    c.current_context = None;
                }
                Ok(())
            })?;
            if !out.quiet {
                println!("context {name} deleted");
            }
            Ok(EXIT_OK)
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn unknown(name: &str, c: &context::Config) -> CliError {
    let names: Vec<_> = c.contexts.keys().cloned().collect();
    CliError::usage(format!(
        "no context named {name:?}; contexts: {}",
        if names.is_empty() {
            "none (`ttgctl context set NAME URL`, or `ttgctl up` adds one)".to_string()
        } else {
            names.join(", ")
        }
    ))
}

fn context_json(name: &str, ctx: &Context, current: bool) -> serde_json::Value {
    json!({
        "name": name, "current": current, "server": ctx.server,
        "auth": ctx.auth(),
        "token_file": ctx.token_file, "ca": ctx.ca, "cert": ctx.cert, "key": ctx.key,
        "made_by_up": ctx.up.is_some(), "stale": ctx.stale_up(),
    })
}

fn list(out: Out) -> CliResult<i32> {
    let c = context::load()?;
    let current = c.current_context.clone().unwrap_or_default();
    if out.quiet {
        for name in c.contexts.keys() {
            println!("{name}");
        }
        return Ok(EXIT_OK);
    }
    let v: Vec<_> = c
        .contexts
        .iter()
        .map(|(n, ctx)| context_json(n, ctx, *n == current))
        .collect();
    if out.value(&serde_json::Value::Array(v)) {
        return Ok(EXIT_OK);
    }
    println!("{:<2}{:<24} {:<32} AUTH", "", "NAME", "SERVER");
    for (name, ctx) in &c.contexts {
        println!(
            "{:<2}{:<24} {:<32} {}{}",
            if *name == current { "*" } else { "" },
            name,
            ctx.server,
            ctx.auth(),
            if ctx.stale_up() {
                "  (its `ttgctl up` is gone)"
            } else {
                ""
            }
        );
    }
    if c.contexts.is_empty() {
        eprintln!("no contexts in {}: `ttgctl up` adds one for its cluster; `ttgctl context set NAME URL --token-file FILE` adds yours", context::path()?.display());
    }
    Ok(EXIT_OK)
}

fn show(name: Option<String>, out: Out) -> CliResult<i32> {
    let c = context::load()?;
    let name = match name.or_else(|| c.current_context.clone()) {
        Some(n) => n,
        None => {
            return Err(CliError::usage(
                "no current context: name one (`ttgctl context list`)",
            ))
        }
    };
    let ctx = c.contexts.get(&name).ok_or_else(|| unknown(&name, &c))?;
    let current = c.current_context.as_deref() == Some(name.as_str());
    if out.value(&context_json(&name, ctx, current)) {
        return Ok(EXIT_OK);
    }
    println!("name     {name}{}", if current { " (current)" } else { "" });
    println!("server   {}", ctx.server);
    println!("auth     {}", ctx.auth());
    for (k, v) in [("ca", &ctx.ca), ("cert", &ctx.cert), ("key", &ctx.key)] {
        if let Some(p) = v {
            println!("{k:<8} {}", p.display());
        }
    }
    if ctx.up.is_some() {
        println!(
            "made by  ttgctl up{}",
            if ctx.stale_up() {
                " (gone: `ttgctl context delete` it)"
            } else {
                " (removed when it stops)"
            }
        );
    }
    Ok(EXIT_OK)
}
