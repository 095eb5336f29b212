//! Command-line flags (clap). Raw flags only; `main.rs` turns them into actions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// scopegate: a reverse-proxy authorization gateway. Matches each request
/// against routes.yaml, verifies its OAuth access token, checks its scopes,
/// and forwards it upstream or rejects it.
#[derive(Debug, Parser)]
#[command(name = "scopegate", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: ConfigArg,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ConfigArg {
    /// The route file [default: $SCOPEGATE_CONFIG, then ./routes.yaml]
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// `--config`, else `$SCOPEGATE_CONFIG`, else `./routes.yaml`.
    pub fn path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| {
                std::env::var_os("SCOPEGATE_CONFIG")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("routes.yaml"))
    }
}

#[derive(Debug, Args, Clone)]
pub struct LogArgs {
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SCOPEGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing env-filter syntax), e.g. `info`, `scopegate=debug`
    #[arg(long, global = true, default_value = "info", env = "SCOPEGATE_LOG")]
    pub log: String,
    /// Write one access-log line per request (target `scopegate::access`)
    #[arg(long, global = true, env = "SCOPEGATE_ACCESS_LOG")]
    pub access_log: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve (the default when no command is given)
    Run,
    /// Load and validate the config, print the compiled route table
    Check,
    /// Say which route matches a request, what it requires, and the decision
    Explain {
        /// Request method, e.g. GET
        method: String,
        /// Request path, e.g. /api/messages/7 (a query string is ignored)
        path: String,
        /// The token's scopes, space-separated; omit for a request without a token
        #[arg(long)]
        scopes: Option<String>,
    },
    /// Run route test cases against the table (no network); exit 1 on any failure
    Test {
        /// YAML file of cases
        cases: PathBuf,
    },
    /// Print the JSON Schema of routes.yaml
    Schema,
    /// A self-contained demo: the shipped routes, a built-in issuer and upstream
    Demo {
        /// Port of the demo gateway on 127.0.0.1 (0 = any free port)
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Send the printed requests, show their answers, and exit (0 if all were as expected)
        #[arg(long)]
        self_test: bool,
    },
}
