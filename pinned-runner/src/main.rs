//! `pinstream`: the command line of the pinstream engine.
//!
//! `run` starts the engine (the default command), `loadgen` drives one, `publish` sends it
//! events read as JSON lines, `consume` reads its logs back over the network, `bridge`
//! forwards them to NATS JetStream, `log` reads its logs offline, `host-check` shows what the
//! machine offers, `demo` exercises the core primitives, `completions` and `man` print the
//! shell completion script and the manual. Every command prints what went wrong on stderr and
//! exits non-zero:
//! 2 for bad arguments or config, 3 when the engine cannot start, 1 for a failure while
//! running.

mod bridge;
mod consume;
mod demo;
mod hostcheck;
mod loadgen;
mod log;
mod logging;
mod publish;
mod run;
mod shell;

use std::fmt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// pinstream: event streaming for machines where latency and memory must be predictable.
///
/// Without a command, `run` starts the engine on its embedded default config.
#[derive(Parser, Debug)]
#[command(name = "pinstream", version, about, long_about)]
struct Cli {
    /// How start-up lines, warnings and errors are written: text (information on stdout,
    /// warnings and errors on stderr, as a terminal shows them) or json (one object per
    /// line on stdout, for journald, Loki or jq). Command output (reports, JSON lines of
    /// consume) is not affected.
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the engine: TCP/UDP ingest, lanes, storage, admin endpoint (the default).
    Run(run::RunArgs),
    // See Publish and Consume below.
    Loadgen(loadgen::LoadgenArgs),
    // No doc comments here: a one-paragraph one would replace the commands' long help
    // (their `about` is the one line `pinstream --help` shows).
    Publish(publish::PublishArgs),
    Consume(consume::ConsumeArgs),
    Bridge(bridge::BridgeArgs),
    /// Read, verify, replay or follow the storage and dead-letter logs.
    Log(log::LogArgs),
    /// Show the CPU topology, isolated CPUs, NUMA nodes and what `run` would pin.
    HostCheck(hostcheck::HostCheckArgs),
    /// Move items through the core primitives across two pinned threads.
    Demo(demo::DemoArgs),
    Completions(shell::CompletionsArgs),
    Man(shell::ManArgs),
    /// Print the SHA-256 of a token read on stdin, for `[[auth.tokens]] sha256`.
    TokenHash,
}

/// A command's failure: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code (see the module docs).
    pub code: u8,
    /// The message, printed as `pinstream: <message>`.
    pub message: String,
}

impl Failure {
    /// Bad arguments or config (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    /// The engine cannot start: a port taken, a data directory not writable (exit 3).
    pub fn start(message: impl Into<String>) -> Self {
        Self {
            code: 3,
            message: message.into(),
        }
    }

    /// A failure while running (exit 1).
    pub fn runtime(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// `pinstream token-hash`: the token is read on stdin (not an argument, which `ps` shows),
/// its trailing newline dropped.
fn token_hash() -> Result<(), Failure> {
    let mut token = String::new();
    std::io::stdin()
        .read_line(&mut token)
        .map_err(|e| Failure::usage(format!("cannot read the token on stdin: {e}")))?;
    let token = token.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        return Err(Failure::usage("no token on stdin"));
    }
    println!("{}", pinstream_host::gateway::hash_token(token));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        None => run::main(&run::RunArgs::default()),
        Some(Command::Run(args)) => run::main(&args),
        Some(Command::Loadgen(args)) => loadgen::main(&args),
        Some(Command::Publish(args)) => publish::main(&args),
        Some(Command::Consume(args)) => consume::main(&args),
        Some(Command::Bridge(args)) => bridge::main(&args),
        Some(Command::Log(args)) => log::main(&args),
        Some(Command::HostCheck(args)) => hostcheck::main(&args),
        Some(Command::Demo(args)) => demo::main(&args),
        Some(Command::Completions(args)) => shell::completions(&args),
        Some(Command::Man(args)) => shell::man(&args),
        Some(Command::TokenHash) => token_hash(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            tracing::error!("{failure}");
            ExitCode::from(failure.code)
        }
    }
}
