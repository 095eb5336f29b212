//! The binary: flags -> load -> build -> serve. `anyhow` lives only here.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use scopegate::cli::{Cli, Command, LogFormat};
use scopegate::{app, config, demo, explain, route_tests};

/// mimalloc: fewer cycles per allocation than glibc's malloc on the proxy path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scopegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let filter = if cli.log.access_log {
        filter.add_directive("scopegate::access=info".parse().expect("static directive"))
    } else {
        filter.add_directive("scopegate::access=off".parse().expect("static directive"))
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Loads the config or prints every error as `FILE:LINE:COL: message`.
fn load(cli: &Cli) -> Result<config::Config, ExitCode> {
    let path = cli.config.path();
    config::load(&path).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        ExitCode::FAILURE
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        None | Some(Command::Run) => {
            let config = match load(&cli) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            runtime()?.block_on(app::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Check) => {
            let config = match load(&cli) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", config::describe(&config));
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Explain {
            method,
            path,
            scopes,
        }) => {
            let config = match load(&cli) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            print!(
                "{}",
                explain::explain(&config, method, path, scopes.as_deref())
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Test { cases }) => {
            let config = match load(&cli) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let text = std::fs::read_to_string(cases)
                .with_context(|| format!("cannot read {}", cases.display()))?;
            match route_tests::run(&config, &text, cases) {
                Ok(report) => {
                    print!("{}", report.render());
                    Ok(if report.all_passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                Err(errors) => {
                    for e in errors {
                        eprintln!("{e}");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Some(Command::Schema) => {
            println!("{}", config::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Demo { port, self_test }) => {
            let path = cli.config.path();
            let ok = runtime()?.block_on(demo::run(&path, *port, *self_test))?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
