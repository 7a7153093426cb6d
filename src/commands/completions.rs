use clap::{Args, CommandFactory};

/// Print a shell completion script (the packages install them).
#[derive(Debug, Args)]
pub struct Completions {
    pub shell: clap_complete::Shell,
}

impl Completions {
    pub fn exec<C: CommandFactory>(&self) -> anyhow::Result<()> {
        use std::io::Write;
        let mut cmd = C::command();
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut cmd, "arpanet", &mut script);
        // A closed pipe (`| head`) is the reader's choice, not an error.
        let _ = std::io::stdout().write_all(&script);
        Ok(())
    }
}
