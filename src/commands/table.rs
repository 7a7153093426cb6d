//! Plain aligned tables for listings (each listing also has `--json`).

/// Prints `rows` under `headers`, columns as wide as their widest cell.
pub fn print(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Nodes that did not answer a cluster-wide listing, on stderr.
pub fn warn_unreachable(unreachable: &[crate::api::Unreachable]) {
    for u in unreachable {
        eprintln!("warning: node {} did not answer: {}", u.node, u.error);
    }
}

/// A listing as JSON (`--json`: the items alone) or as a table, one row per item.
pub fn emit<T: serde::Serialize>(
    json: bool,
    items: &[T],
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(items)?);
    } else {
        print(headers, &items.iter().map(row).collect::<Vec<_>>());
    }
    Ok(())
}

/// Which nodes a listing covers: this one (default), one (`--node`) or all (`--all`).
#[derive(Debug, clap::Args)]
pub struct Nodes {
    /// Every node's.
    #[arg(long, short)]
    pub all: bool,
    /// One node's (its arpanet address, e.g. 0.2).
    #[arg(long, conflicts_with = "all")]
    pub node: Option<crate::addressing::NodeAddress>,
}

impl Nodes {
    /// The API path for `base` (`/v1/containers`) over these nodes.
    pub fn path(&self, base: &str) -> String {
        match (self.all, self.node) {
            (_, Some(node)) => format!("{base}?node={node}"),
            (true, None) => format!("{base}?all=true"),
            (false, None) => base.to_string(),
        }
    }
}
