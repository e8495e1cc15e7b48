//! Prometheus text parsing: `parse_metrics`, `metric_value`.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_end, has_labels) = match line.find(['{', ' ']) {
            Some(i) => (i, line.as_bytes()[i] == b'{'),
            None => continue,
        };
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if has_labels {
            let bytes = rest.as_bytes();
            let mut i = 1;
            loop {
                while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    i += 1;
                    break;
                }
                let ks = i;
                while i < bytes.len() && bytes[i] != b'=' {
                    i += 1;
                }
                let key = rest[ks..i].trim().to_string();
                i += 1; // '='
                if i >= bytes.len() || bytes[i] != b'"' {
                    break;
                }
                i += 1;
                let mut val = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                        val.push(match bytes[i] {
                            b'n' => '\n',
                            c => c as char,
                        });
                    } else {
                        val.push(bytes[i] as char);
                    }
                    i += 1;
                }
                i += 1; // closing quote
                labels.insert(key, val);
            }
            rest = &rest[i.min(rest.len())..];
        }
        let Some(v) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse() {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// Sum of the series of `name` whose labels include `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for s in parse_metrics(text) {
        if s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)) {
            *found.get_or_insert(0.0) += s.value;
        }
    }
    found
}
