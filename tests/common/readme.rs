//! The README's tables, read at test time so the tests follow the contract as it grows.

pub fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("read README.md")
}

/// Cells of every Markdown table row whose first cell is one code span starting with
/// `prefix` (e.g. "`--" for the settings table, "`crier_" for the metrics table).
pub fn readme_rows(prefix: &str) -> Vec<Vec<String>> {
    readme()
        .lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>())
        .filter(|cells| {
            cells.first().is_some_and(|c| c.starts_with(prefix) && c.ends_with('`') && c.matches('`').count() == 2)
        })
        .collect()
}

/// The first `code` span of a Markdown cell.
pub fn first_code(cell: &str) -> Option<String> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(cell[start..start + len].to_string())
}

/// The settings of the README table: (name without `--`, default cell).
pub fn readme_settings() -> Vec<(String, String)> {
    let rows = readme_rows("`--");
    assert!(!rows.is_empty(), "no settings table found in README.md");
    rows.into_iter()
        .map(|c| {
            let name = first_code(&c[0]).unwrap();
            (name.trim_start_matches("--").to_string(), c.get(1).cloned().unwrap_or_default())
        })
        .collect()
}

/// The metric names of the README table (labels stripped).
pub fn readme_metrics() -> Vec<String> {
    let rows = readme_rows("`crier_");
    assert!(!rows.is_empty(), "no metrics table found in README.md");
    rows.into_iter()
        .map(|c| {
            let m = first_code(&c[0]).unwrap();
            m.split('{').next().unwrap().to_string()
        })
        .collect()
}

/// The commands of the first ```sh block after the line `heading` (e.g. "## Example: a live
/// flight board"), one per line, without comments and blank lines: what a reader would type.
pub fn readme_commands(heading: &str) -> Vec<String> {
    let text = readme();
    let start = text
        .lines()
        .position(|l| l.trim_end() == heading)
        .unwrap_or_else(|| panic!("README.md has no heading {heading:?}"));
    let mut lines = text.lines().skip(start + 1).skip_while(|l| l.trim() != "```sh").skip(1);
    let mut out = Vec::new();
    for line in lines.by_ref() {
        if line.trim() == "```" {
            return out;
        }
        let cmd = line.split(" #").next().unwrap().trim();
        if !cmd.is_empty() && !cmd.starts_with('#') {
            out.push(cmd.to_string());
        }
    }
    panic!("the ```sh block after {heading:?} in README.md is not closed")
}
