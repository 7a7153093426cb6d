use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, CommandFactory};

/// Write the man pages (arpanet.1, arpanetd.8) into a directory; the packages ship them.
#[derive(Debug, Args)]
pub struct Man {
    pub dir: PathBuf,
}

impl Man {
    pub fn exec<C: CommandFactory>(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("create {}", self.dir.display()))?;
        let pages = [
            (C::command(), "arpanet.1", "1"),
            (crate::daemon::Opts::command(), "arpanetd.8", "8"),
        ];
        for (cmd, file, section) in pages {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .section(section)
                .render(&mut page)
                .with_context(|| format!("render {file}"))?;
            let path = self.dir.join(file);
            std::fs::write(&path, page).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(())
    }
}
