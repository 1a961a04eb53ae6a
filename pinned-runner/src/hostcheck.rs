//! `pinstream host-check` (being built).

use crate::Failure;

/// `pinstream host-check` flags.
#[derive(clap::Args, Debug)]
pub struct HostCheckArgs {}

/// Prints the host report.
pub fn main(_args: &HostCheckArgs) -> Result<(), Failure> {
    Err(Failure::usage("host-check is not built yet"))
}
