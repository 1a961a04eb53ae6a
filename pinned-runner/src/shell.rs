//! `pinstream completions SHELL` and `pinstream man [--dir DIR]`: the shell completion script
//! and the manual pages, generated from the same clap definitions as `--help`, so they cannot
//! drift from the flags.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::{Cli, Failure};

/// Print a shell completion script for `pinstream` on stdout.
///
/// Install it where your shell looks, for example:
///   bash: pinstream completions bash > ~/.local/share/bash-completion/completions/pinstream
///   zsh:  pinstream completions zsh > ~/.zfunc/_pinstream   (with fpath+=~/.zfunc in .zshrc)
///   fish: pinstream completions fish > ~/.config/fish/completions/pinstream.fish
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Print the manual page of `pinstream` (roff) on stdout, or write one page per command.
///
/// `pinstream man | man -l -` reads it at once; `pinstream man --dir /usr/local/share/man/man1`
/// installs pinstream.1, pinstream-run.1, pinstream-log-inspect.1 and the others.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write pinstream.1 and a page per command and sub-command into this directory
    /// (created if missing) instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: &CompletionsArgs) -> Result<(), Failure> {
    let mut cmd = Cli::command();
    let mut out = io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "pinstream", &mut out);
    out.flush()
        .map_err(|e| Failure::runtime(format!("writing the completion script: {e}")))
}

pub fn man(args: &ManArgs) -> Result<(), Failure> {
    let cmd = Cli::command();
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Failure::runtime(format!("creating {}: {e}", dir.display())))?;
            clap_mangen::generate_to(cmd, dir).map_err(|e| {
                Failure::runtime(format!(
                    "writing the manual pages to {}: {e}",
                    dir.display()
                ))
            })?;
            println!("manual pages written to {}", dir.display());
            Ok(())
        }
        None => {
            let mut out = io::stdout().lock();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .and_then(|()| out.flush())
                .map_err(|e| Failure::runtime(format!("writing the manual page: {e}")))
        }
    }
}
