//! Start-up messages, warnings and errors go through `tracing`, in one of two formats
//! (`--log-format`): `text`, the lines a terminal has always shown (information on stdout,
//! `pinstream: warning: …` and `pinstream: …` errors on stderr), or `json`, one object per line
//! on stdout with `timestamp`, `level`, `target` and the message (for journald, Loki, jq).
//!
//! Only cold paths log: the command line, the engine's start and stop, the admin and
//! consumer threads' rare errors. The pinned engine threads never do.

use std::fmt;
use std::io;

use clap::ValueEnum;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::fmt::{FmtContext, format};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Plain lines: information on stdout, warnings and errors on stderr.
    #[default]
    Text,
    /// One JSON object per line on stdout (timestamp, level, target, fields).
    Json,
}

/// The format chosen at start-up (the status line asks it).
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Installs the global subscriber. A closed stdout or stderr (`pinstream run | head`) stops
/// the printing, never the program: write errors are not reported.
pub fn init(chosen: LogFormat) {
    let _ = FORMAT.set(chosen);
    let builder = tracing_subscriber::fmt()
        .with_max_level(Level::INFO)
        .log_internal_errors(false);
    let installed = match chosen {
        LogFormat::Text => builder
            .event_format(Plain)
            .with_writer(io::stderr.with_max_level(Level::WARN).or_else(io::stdout))
            .try_init(),
        LogFormat::Json => builder
            .event_format(format::format().json().flatten_event(true))
            .fmt_fields(format::JsonFields::new())
            .with_writer(io::stdout)
            .try_init(),
    };
    // A second call (tests) keeps the first subscriber.
    drop(installed);
}

/// The format [`init`] installed (text before it runs).
pub fn format_in_use() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// The live status line: as it is on a terminal in text, a `pinstream::status` event in json.
pub fn status(line: &str) {
    match format_in_use() {
        LogFormat::Text => {
            use std::io::Write;
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
        LogFormat::Json => tracing::info!(target: "pinstream::status", "{line}"),
    }
}

/// The text format: the message alone, `pinstream: warning: ` before a warning and
/// `pinstream: ` before an error (the lines pinstream printed before it used `tracing`).
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        match *event.metadata().level() {
            Level::ERROR => writer.write_str("pinstream: ")?,
            Level::WARN => writer.write_str("pinstream: warning: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
