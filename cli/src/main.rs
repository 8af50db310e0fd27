//! `ttgctl`: the user's front door to TTG — submit sweeps, watch them, read
//! results, manage runs, and run a whole local cluster with `up` / `demo`.
//!
//! Modules: [`client`] (connection, errors → exit codes), [`output`]
//! (text/JSON), one module per command family ([`submit`], [`watch`],
//! [`run`] (status, cancel, retry, delete), [`runs`], [`fleet`] (agents,
//! kernels), [`results`], [`up`], [`demo`]), [`cluster`] (local processes),
//! [`sys`].
//!
//! Exit codes: 0 success, 1 run failed or cancelled, 2 usage error or
//! rejected request, 3 server unavailable.

mod best;
mod client;
mod cluster;
mod demo;
mod fleet;
mod output;
mod results;
mod run;
mod runs;
mod submit;
mod sweep;
mod sys;
mod up;
mod watch;

use clap::{Parser, Subcommand};

use client::CliError;
use output::Format;

#[derive(Parser, Debug)]
#[command(
    name = "ttgctl",
    version,
    about = "Submit, watch and manage TTG parameter sweeps; run a local cluster",
    after_help = "Exit codes: 0 success, 1 run failed or cancelled, 2 usage error or rejected request, 3 server unavailable."
)]
struct Cli {
    /// Server URL (default http://127.0.0.1:50051).
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "TTG_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,

    /// Bearer token (default: TTG_TOKEN, else ~/.ttg/token as left by `ttgctl up`).
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        env = "TTG_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,

    /// PEM CA of the server's certificate, for https:// servers (default: system roots).
    #[arg(long, global = true, help_heading = "Connection", env = "TTG_CA")]
    ca: Option<std::path::PathBuf>,

    /// PEM client certificate for servers requiring mutual TLS (with --key).
    #[arg(long, global = true, help_heading = "Connection", env = "TTG_CERT")]
    cert: Option<std::path::PathBuf>,

    /// PEM key of --cert.
    #[arg(long, global = true, help_heading = "Connection", env = "TTG_KEY")]
    key: Option<std::path::PathBuf>,

    /// Output format: text or json for every command; csv (default), json, jsonl or parquet for `results`.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "text"
    )]
    format: Format,

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
    /// Export a run's points in index order (index, named values, outputs): `-o csv` (default), json, jsonl or parquet (--file); --sort OUTPUT --limit K for the best.
    Results(results::Args),
    /// The K best points of a run by one output: `ttgctl best RUN --by loss -n 10` (smallest first; --max for largest).
    Best(best::Args),
    /// Run a local cluster (Redis, server, agents) until Ctrl-C.
    Up(cluster::ClusterOpts),
    /// Run a local cluster, a placeholder sweep watched to the end, and check its sum.
    Demo(demo::DemoOpts),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // `up` and `demo` own child processes and must tear them down whatever
    // happens to stdout; everything else may die quietly on a closed pipe.
    if !matches!(cli.command, Cmd::Up(_) | Cmd::Demo(_)) {
        sys::default_sigpipe();
    }
    let code = match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ttgctl: {e}");
            e.code
        }
    };
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> Result<i32, CliError> {
    let server = cli.server.as_str();
    if cli.cert.is_some() != cli.key.is_some() {
        return Err(CliError::usage("--cert and --key go together"));
    }
    client::set_connect_opts(ttg_proto::client::ConnectOpts {
        token: cli.token.clone().or_else(client::saved_token),
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    });
    if matches!(cli.format, Format::Csv | Format::Jsonl | Format::Parquet)
        && !matches!(cli.command, Cmd::Results(_))
    {
        return Err(CliError::usage(
            "-o csv, jsonl and parquet apply to `results` only; use -o text or -o json",
        ));
    }
    let format = cli.format;
    match cli.command {
        Cmd::Submit(a) => submit::submit(server, a, format).await,
        Cmd::Status(a) => run::status(server, &a.run, format).await,
        Cmd::Watch(a) => Ok(watch::watch(server, &a.run, &a.after, format).await?.exit),
        Cmd::Cancel(a) => run::cancel(server, &a.run, &a.reason, format).await,
        Cmd::Retry(a) => run::retry(server, &a.run, format).await,
        Cmd::Runs(a) => runs::runs(server, a, format).await,
        Cmd::Delete(a) => run::delete(server, &a.run, format).await,
        Cmd::Agents => fleet::agents(server, format).await,
        Cmd::Kernels => fleet::kernels(server, format).await,
        Cmd::Results(a) => {
            let format = match format {
                Format::Json => results::ResultsFormat::Json,
                Format::Jsonl => results::ResultsFormat::Jsonl,
                Format::Parquet => results::ResultsFormat::Parquet,
                Format::Text | Format::Csv => results::ResultsFormat::Csv,
            };
            results::results(server, &a, format).await
        }
        Cmd::Best(a) => best::best(server, &a, format).await,
        Cmd::Up(opts) => up::up(opts).await,
        Cmd::Demo(opts) => demo::demo(opts).await,
    }
}
