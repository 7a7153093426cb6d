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
