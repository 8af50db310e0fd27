//! `ttgctl`: the user's front door to TTG — submit sweeps, watch them, read
//! results, manage runs, and run a whole local cluster with `up` / `demo`.
//!
//! Modules: [`client`] (connection, contexts resolved, errors → exit codes),
//! [`context`] (the config file), [`output`] (text/JSON/YAML), one module
//! per command family ([`submit`], [`watch`], [`run`] (status, cancel,
//! retry, delete, wait, logs), [`runs`], [`fleet`] (agents, kernels),
//! [`results`], [`best`], [`up`], [`demo`], [`shell`] (completions, man
//! pages)), [`cluster`] (local processes), [`sys`].
//!
//! Exit codes: [`client::EXIT_CODES`].

mod best;
mod client;
mod cluster;
mod context;
mod context_cmd;
mod demo;
mod fleet;
mod output;
mod ports;
mod redis_cluster;
mod results;
mod run;
mod runs;
mod shell;
mod submit;
mod sweep;
mod sys;
mod up;
mod watch;

use clap::{Parser, Subcommand};

use client::{CliError, ConnFlags};
use output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "ttgctl",
    version,
    about = "Submit, watch and manage TTG parameter sweeps; run a local cluster",
    after_help = client::exit_codes_help(),
    propagate_version = true
)]
struct Cli {
    /// Use this context of ~/.ttg/config (`ttgctl context list`) [env: TTG_CONTEXT].
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "TTG_CONTEXT",
        hide_env = true
    )]
    context: Option<String>,

    /// Server: host:port (plaintext), http://host:port or https://host:port; alone, it takes the credentials of the context with that server [env: TTG_SERVER] [default: the current context's, else 127.0.0.1:50051].
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "TTG_SERVER",
        hide_env = true,
        value_parser = client::parse_server
    )]
    server: Option<String>,

    /// Bearer token (prefer --token-file: a command line is visible to other users) [env: TTG_TOKEN].
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "TTG_TOKEN",
        hide_env = true,
        hide_env_values = true
    )]
    token: Option<String>,

    /// File holding the bearer token [env: TTG_TOKEN_FILE].
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "TTG_TOKEN_FILE",
        hide_env = true
    )]
    token_file: Option<std::path::PathBuf>,

    /// PEM CA of the server's certificate, for https:// servers [env: TTG_CA] [default: system roots].
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "TTG_CA",
        hide_env = true
    )]
    ca: Option<std::path::PathBuf>,

    /// PEM client certificate for servers requiring mutual TLS (with --key) [env: TTG_CERT].
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "TTG_CERT",
        hide_env = true
    )]
    cert: Option<std::path::PathBuf>,

    /// PEM key of --cert [env: TTG_KEY].
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "TTG_KEY",
        hide_env = true
    )]
    key: Option<std::path::PathBuf>,

    /// Output format: text, wide (lists with more columns), json or yaml; `results` writes csv (its default), json, jsonl or parquet [default: text].
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        help_heading = "Output"
    )]
    format: Option<Format>,

    /// Print only ids (runs, agents, kernels, a submitted run), one per line: for xargs and scripts.
    #[arg(short = 'q', long, global = true, help_heading = "Output")]
    quiet: bool,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Submit a sweep: `ttgctl submit --params 10000 --watch`.
    Submit(submit::Args),
    /// Show a run's state, counters and aggregate.
    Status(run::RunArg),
    /// Follow a run's progress to its end (resumes if the stream drops).
    Watch(watch::Args),
    /// Wait for a run to end, printing nothing: the exit code says how it ended (for scripts and CI).
    Wait(run::WaitArgs),
    /// Failed attempts of a run (error and stderr tail), from its events: `--chunk N` for one chunk.
    Logs(run::LogsArgs),
    /// Cancel a queued or running run.
    Cancel(run::CancelArgs),
    /// Re-queue a run's dead-lettered chunks with fresh attempts; the run goes on.
    Retry(run::RunArg),
    /// List runs, newest first, filtered by state, name and age, a page at a time.
    Runs(runs::RunsArgs),
    /// Delete a finished run's data now: record, results, events, dead letters (a running run must be cancelled first).
    Delete(run::RunArg),
    /// List agents with a live session.
    Agents,
    /// List the kernels connected agents offer, with their arguments.
    Kernels,
    /// Export a run's points in index order (index, named values, outputs): csv, json, jsonl or parquet (--file); --sort OUTPUT --limit K for the best.
    Results(results::Args),
    /// The K best points of a run by one output: `ttgctl best RUN --by loss -n 10` (smallest first; --max for largest).
    Best(best::Args),
    /// Named connection settings (~/.ttg/config): list, use, show, set, delete.
    #[command(subcommand)]
    Context(context_cmd::Cmd),
    /// Run a local cluster (Redis, server, agents) until Ctrl-C; it becomes the current context.
    Up(cluster::ClusterOpts),
    /// Run a local cluster, a placeholder sweep watched to the end, and check its sum.
    Demo(demo::DemoOpts),
    /// Print a shell completion script: `ttgctl completion bash > /etc/bash_completion.d/ttgctl`.
    Completion(shell::CompletionArgs),
    /// Write man pages for ttgctl and every subcommand into a folder (`make install` does).
    #[command(hide = true)]
    Man(shell::ManArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // `up` and `demo` own child processes and must tear them down whatever
    // happens to stdout (they never panic on it); everything else may end
    // quietly on a closed pipe.
    if !matches!(cli.command, Cmd::Up(_) | Cmd::Demo(_)) {
        sys::quiet_on_closed_stdout();
    }
    let structured = matches!(cli.format, Some(Format::Json | Format::Yaml));
    let code = match dispatch(cli).await {
        Ok(code) => code,
        Err(e) if e.code == sys::EXIT_CLOSED_PIPE => e.code,
        Err(e) => {
            if structured {
                eprintln!("{}", e.to_json());
            } else {
                eprintln!("ttgctl: {e}");
            }
            e.code
        }
    };
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> Result<i32, CliError> {
    if cli.cert.is_some() != cli.key.is_some() {
        return Err(CliError::usage("--cert and --key go together"));
    }
    let flags = ConnFlags {
        context: cli.context.clone(),
        server: cli.server.clone(),
        token: cli.token.clone(),
        token_file: cli.token_file.clone(),
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    };
    let results = matches!(cli.command, Cmd::Results(_));
    let format = match cli.format {
        Some(Format::Csv | Format::Jsonl | Format::Parquet) if !results => {
            return Err(CliError::usage(
                "-o csv, jsonl and parquet apply to `results` only; use -o text, wide, json or yaml",
            ))
        }
        Some(Format::Wide | Format::Yaml | Format::Text) if results => {
            return Err(CliError::usage(
                "`results` writes -o csv (the default), json, jsonl or parquet",
            ))
        }
        Some(f) => f,
        None if results => Format::Csv,
        None => Format::Text,
    };
    let out = output::Out {
        format,
        quiet: cli.quiet,
    };
    // Commands that do not talk to a server do not read the config's
    // connection settings (a broken config must not stop `context set`).
    match cli.command {
        Cmd::Context(c) => return context_cmd::run(c, &flags, out),
        Cmd::Completion(a) => return shell::completion::<Cli>(&a),
        Cmd::Man(a) => return shell::man::<Cli>(&a),
        Cmd::Up(opts) => return up::up(opts).await,
        Cmd::Demo(opts) => return demo::demo(opts).await,
        _ => {}
    }
    let target = client::resolve(&flags)?;
    client::set_connect_opts(target.opts.clone());
    let server = target.server.as_str();
    let run = |given: &str| client::resolve_run(server, given.to_string());
    match cli.command {
        Cmd::Submit(a) => submit::submit(server, a, out).await,
        Cmd::Status(a) => run::status(server, &run(&a.run).await?, out).await,
        Cmd::Watch(a) => Ok(watch::watch(server, &run(&a.run).await?, &a.after, format)
            .await?
            .exit),
        Cmd::Wait(a) => run::wait(server, &run(&a.run).await?, a.timeout).await,
        Cmd::Logs(a) => run::logs(server, &run(&a.run).await?, &a, out).await,
        Cmd::Cancel(a) => run::cancel(server, &run(&a.run).await?, &a.reason, out).await,
        Cmd::Retry(a) => run::retry(server, &run(&a.run).await?, out).await,
        Cmd::Runs(a) => runs::runs(server, a, out).await,
        Cmd::Delete(a) => run::delete(server, &run(&a.run).await?, out).await,
        Cmd::Agents => fleet::agents(server, out).await,
        Cmd::Kernels => fleet::kernels(server, out).await,
        Cmd::Results(mut a) => {
            a.run = run(&a.run).await?;
            let format = match format {
                Format::Json => results::ResultsFormat::Json,
                Format::Jsonl => results::ResultsFormat::Jsonl,
                Format::Parquet => results::ResultsFormat::Parquet,
                _ => results::ResultsFormat::Csv,
            };
            results::results(server, &a, format).await
        }
        Cmd::Best(mut a) => {
            a.run = run(&a.run).await?;
            best::best(server, &a, out).await
        }
        // Handled above, without a server.
        Cmd::Context(_) | Cmd::Completion(_) | Cmd::Man(_) | Cmd::Up(_) | Cmd::Demo(_) => {
            Err(CliError::failed("internal: command dispatched twice"))
        }
    }
}
