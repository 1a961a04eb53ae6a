//! `pinstream loadgen` (being built).

use crate::Failure;

/// `pinstream loadgen` flags.
#[derive(clap::Args, Debug)]
pub struct LoadgenArgs {}

/// Runs the load generator.
pub fn main(_args: &LoadgenArgs) -> Result<(), Failure> {
    Err(Failure::usage("loadgen is not built yet"))
}
