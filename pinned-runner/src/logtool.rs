//! `pinstream log` (being built).

use crate::Failure;

/// `pinstream log` flags.
#[derive(clap::Args, Debug)]
pub struct LogArgs {}

/// Runs a log command.
pub fn main(_args: &LogArgs) -> Result<(), Failure> {
    Err(Failure::usage("log is not built yet"))
}
