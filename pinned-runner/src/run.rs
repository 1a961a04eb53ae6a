//! `pinstream run` (being built).

use crate::Failure;

/// `pinstream run` flags.
#[derive(clap::Args, Debug, Default)]
pub struct RunArgs {}

/// Runs the engine.
pub fn main(_args: &RunArgs) -> Result<(), Failure> {
    Err(Failure::usage("run is not built yet"))
}
