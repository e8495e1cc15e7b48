//! The status page (`GET /` on the admin port): one self-contained HTML file, embedded in
//! the binary, that draws its charts on `<canvas>` from `GET /stats` once a second. No
//! CDN, no script or style from anywhere else. With `--admin-token-file`, a browser without
//! the token gets [`LOGIN`] (a form that reloads `/?token=…`); the page then keeps the
//! token in sessionStorage, drops it from the address bar, and sends it to `/stats` as
//! `Authorization: Bearer`.

/// The page (src/ops/status_page.html).
pub const PAGE: &str = include_str!("status_page.html");

/// The 401 answer to `GET /` without the token.
pub const LOGIN: &str = "<!doctype html><meta charset=utf-8><title>crier: token needed</title>\
<body style=\"font:15px system-ui;margin:3em\"><h1>crier status</h1>\
<p>This crier has <code>--admin-token-file</code>. Enter its token:</p>\
<form method=get action=\"/\"><input name=token type=password autofocus size=40> <button>Open</button></form>";

/// The `token` parameter of a query string, percent-decoded (`None` if absent or empty).
pub fn query_token(query: &str) -> Option<Vec<u8>> {
    let raw = query.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_from_the_query() {
        assert_eq!(query_token("token=abc"), Some(b"abc".to_vec()));
        assert_eq!(query_token("x=1&token=a%2Bb%25c"), Some(b"a+b%c".to_vec()));
        assert_eq!(query_token("token=a%2"), Some(b"a%2".to_vec()), "a cut escape stays as it is");
        assert_eq!(query_token("token="), None);
        assert_eq!(query_token("tokens=abc"), None);
        assert_eq!(query_token(""), None);
    }

    #[test]
    fn the_page_is_self_contained_and_small() {
        assert!(PAGE.len() < 20 * 1024, "the page is {} bytes", PAGE.len());
        for outside in ["http://", "https://", "//cdn", "<link", "src=\""] {
            assert!(!PAGE.contains(outside), "the page must not load anything from elsewhere ({outside:?})");
        }
    }
}
