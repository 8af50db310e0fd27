//! `ttgctl`: the user's front door to TTG — submit sweeps, watch them, read
//! results, manage runs, and run a whole local cluster with `up` / `demo`.
//!
//! Modules: [`client`] (connection, errors → exit codes), [`output`]
//! (text/JSON), one module per subcommand ([`submit`], [`watch`], [`status`],
//! [`results`], [`up`], [`demo`]), [`cluster`] (local processes), [`sys`].
//!
//! Exit codes: 0 success, 1 run failed or cancelled, 2 usage error or
//! rejected request, 3 server unavailable.

mod client;
mod cluster;
mod demo;
mod output;
mod results;
mod status;
mod submit;
mod sys;
mod up;
mod watch;

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

use client::{CliError, EXIT_USAGE};
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
        env = "TTG_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,

    /// Bearer token (default: TTG_TOKEN, else ~/.ttg/token as left by `ttgctl up`).
    #[arg(long, global = true, env = "TTG_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// PEM CA of the server's certificate, for https:// servers (default: system roots).
    #[arg(long, global = true, env = "TTG_CA")]
    ca: Option<std::path::PathBuf>,

    /// PEM client certificate for servers requiring mutual TLS (with --key).
    #[arg(long, global = true, env = "TTG_CERT")]
    cert: Option<std::path::PathBuf>,

    /// PEM key of --cert.
    #[arg(long, global = true, env = "TTG_KEY")]
    key: Option<std::path::PathBuf>,

    /// Output format: text or json for every command; csv (default) or json for `results`.
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
    Submit {
        /// Number of parameters, 1..=10^10.
        #[arg(long)]
        params: u64,
        /// Parameters per chunk, 1..=10^6 (default 100).
        #[arg(long)]
        chunk_size: Option<u64>,
        /// Kernel (default placeholder).
        #[arg(long, default_value = "placeholder")]
        kernel: String,
        /// Kernel argument key=value, repeatable (e.g. --arg work_ms=1).
        #[arg(long = "arg", value_name = "KEY=VALUE")]
        args: Vec<String>,
        /// Attempts per chunk before dead-lettering, 1..=100 (default 3).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Name of the run (default none).
        #[arg(long, default_value = "")]
        name: String,
        /// Keep the run's data this long after it ends, e.g. 30d or 12h (default: the server's --run-retention, 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<std::time::Duration>,
        /// Stop the run as FAILED once this many chunk attempts in a row fail with the same first line of error, 0..=100000 (0: never; default 10).
        #[arg(long, value_name = "N")]
        fail_fast: Option<u32>,
        /// Watch the run to its end after submitting.
        #[arg(long)]
        watch: bool,
    },
    /// Show a run's state, counters and aggregate.
    Status {
        /// Run id.
        run: String,
    },
    /// Follow a run's progress to its end (resumes if the stream drops).
    Watch {
        /// Run id.
        run: String,
        /// Resume after this event id (default: from the start).
        #[arg(long, default_value = "")]
        after: String,
    },
    /// Cancel a queued or running run.
    Cancel {
        /// Run id.
        run: String,
        /// Reason, recorded in the run's events (default none).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Re-queue a run's dead-lettered chunks with fresh attempts; the run goes on.
    Retry {
        /// Run id.
        run: String,
    },
    /// List runs, newest first, filtered by state, name and age, a page at a time.
    Runs {
        /// Runs per page, 1..=1000 (default 50).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only runs in these states (repeatable or comma-separated): queued, running, succeeded, failed, cancelled.
        #[arg(long = "state", value_delimiter = ',', value_enum)]
        states: Vec<status::StateArg>,
        /// Only runs whose name contains this text (case-insensitive).
        #[arg(long, default_value = "")]
        name: String,
        /// Only runs submitted within this long, e.g. 2h or 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only runs submitted at least this long ago, e.g. 1d.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Continue from a previous page (the token it printed).
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow every page to the end instead of printing one page.
        #[arg(long)]
        all: bool,
    },
    /// Delete a finished run's data now: record, results, events, dead letters (a running run must be cancelled first).
    Delete {
        /// Run id.
        run: String,
    },
    /// List agents with a live session.
    Agents,
    /// List the kernels connected agents offer, with their arguments.
    Kernels,
    /// Export a run's values in parameter order: `-o csv` (default) or `-o json`.
    Results {
        /// Run id.
        run: String,
        /// Write to this file instead of stdout.
        #[arg(long)]
        file: Option<String>,
        /// Exit 0 even if the run did not succeed (its values so far are written either way; without this a run that is not SUCCEEDED exits 1 and says on stderr how many values are missing).
        #[arg(long)]
        partial: bool,
    },
    /// Run a local cluster (Redis, server, agents) until Ctrl-C.
    Up {
        /// Number of agents (default 3).
        #[arg(long, default_value_t = 3)]
        agents: u32,
        /// Chunks each agent computes at once (default: number of CPUs).
        #[arg(long)]
        concurrency: Option<u32>,
        /// Use this Redis instead of starting a private redis-server.
        #[arg(long)]
        redis_url: Option<String>,
        /// Address the server listens on (default 127.0.0.1:50051).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Redis key prefix (default ttg:).
        #[arg(long, default_value = "ttg:")]
        prefix: String,
        /// Let the agents run users' programs with the exec kernel.
        #[arg(long)]
        allow_exec: bool,
        /// Serve Prometheus metrics from the server and from each agent, each on its own free port (printed at start).
        #[arg(long)]
        metrics: bool,
    },
    /// Run a local cluster, a placeholder sweep watched to the end, and check its sum.
    Demo {
        /// Number of parameters (default 10000).
        #[arg(long, default_value_t = 10_000)]
        params: u64,
        /// Number of agents (default 3).
        #[arg(long, default_value_t = 3)]
        agents: u32,
        /// Chunks each agent computes at once (default 1).
        #[arg(long, default_value_t = 1)]
        concurrency: u32,
        /// Simulated work per parameter in ms (default 1: about 3.4 s for 10,000 over 3 agents).
        #[arg(long, default_value_t = 1)]
        work_ms: u64,
        /// Use this Redis instead of starting a private redis-server.
        #[arg(long)]
        redis_url: Option<String>,
        /// SIGKILL one agent when this percentage of chunks is done (1..=99), show the reclaim.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=99))]
        kill_at: Option<u32>,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // `up` and `demo` own child processes and must tear them down whatever
    // happens to stdout; everything else may die quietly on a closed pipe.
    if !matches!(cli.command, Cmd::Up { .. } | Cmd::Demo { .. }) {
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
    if cli.format == Format::Csv && !matches!(cli.command, Cmd::Results { .. }) {
        return Err(CliError::usage(
            "-o csv applies to `results` only; use -o text or -o json",
        ));
    }
    match cli.command {
        Cmd::Submit {
            params,
            chunk_size,
            kernel,
            args,
            max_attempts,
            name,
            retention,
            fail_fast,
            watch,
        } => {
            let o = submit::SubmitOpts {
                fail_fast,
                params,
                chunk_size,
                kernel,
                args,
                max_attempts,
                name,
                retention,
                watch,
            };
            submit::run(server, o, cli.format).await
        }
        Cmd::Status { run } => status::status(server, &run, cli.format).await,
        Cmd::Watch { run, after } => Ok(watch::watch(server, &run, &after, cli.format).await?.exit),
        Cmd::Cancel { run, reason } => status::cancel(server, &run, &reason, cli.format).await,
        Cmd::Retry { run } => status::retry(server, &run, cli.format).await,
        Cmd::Runs {
            limit,
            states,
            name,
            since,
            older_than,
            page_token,
            all,
        } => {
            let q = status::RunsQuery {
                limit,
                states,
                name,
                since,
                older_than,
                page_token,
                all,
            };
            status::runs(server, q, cli.format).await
        }
        Cmd::Delete { run } => status::delete(server, &run, cli.format).await,
        Cmd::Agents => status::agents(server, cli.format).await,
        Cmd::Kernels => status::kernels(server, cli.format).await,
        Cmd::Results { run, file, partial } => {
            let format = match cli.format {
                Format::Json => results::ResultsFormat::Json,
                Format::Text | Format::Csv => results::ResultsFormat::Csv,
            };
            results::results(server, &run, format, file.as_deref(), partial).await
        }
        Cmd::Up {
            agents,
            concurrency,
            redis_url,
            listen,
            prefix,
            allow_exec,
            metrics,
        } => {
            if agents == 0 || agents > 256 {
                return Err(CliError {
                    code: EXIT_USAGE,
                    message: format!("--agents must be in 1..=256, got {agents}"),
                });
            }
            up::up(cluster::ClusterOpts {
                agents,
                concurrency,
                redis_url,
                listen,
                prefix,
                allow_exec,
                metrics,
            })
            .await
        }
        Cmd::Demo {
            params,
            agents,
            concurrency,
            work_ms,
            redis_url,
            kill_at,
        } => {
            if agents == 0 || agents > 64 {
                return Err(CliError::usage(format!(
                    "--agents must be in 1..=64, got {agents}"
                )));
            }
            if kill_at.is_some() && agents < 2 {
                return Err(CliError::usage(
                    "--kill-at needs --agents 2 or more: someone must finish the run",
                ));
            }
            demo::demo(demo::DemoOpts {
                params,
                agents,
                concurrency,
                work_ms,
                redis_url,
                kill_at,
            })
            .await
        }
    }
}
