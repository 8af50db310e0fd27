//! What the shell and `man` get from the same definitions as `--help`:
//! completion scripts (`ttgctl completion bash|zsh|fish|powershell|elvish`)
//! and man pages (`ttgctl man --out-dir DIR`, run by `make install`).

use std::path::PathBuf;

use clap::CommandFactory;

use crate::client::{CliError, CliResult, EXIT_OK};

/// `ttgctl completion`'s arguments.
#[derive(clap::Args, Debug)]
pub struct CompletionArgs {
    /// The shell: bash, zsh, fish, powershell or elvish.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `ttgctl man`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Folder to write ttgctl.1 and one page per subcommand into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

/// Print the completion script for a shell on stdout.
pub fn completion<C: CommandFactory>(a: &CompletionArgs) -> CliResult<i32> {
    use std::io::Write;
    let mut cmd = C::command();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "ttgctl", &mut script);
    std::io::stdout().write_all(&script)?;
    Ok(EXIT_OK)
}

/// Write the man pages.
pub fn man<C: CommandFactory>(a: &ManArgs) -> CliResult<i32> {
    std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| CliError::usage(format!("--out-dir {}: {e}", a.out_dir.display())))?;
    clap_mangen::generate_to(C::command(), &a.out_dir).map_err(|e| {
        CliError::failed(format!("writing man pages to {}: {e}", a.out_dir.display()))
    })?;
    Ok(EXIT_OK)
}
