//! Which browser pages may connect, with the `websocket` sink's semantics: programs (no
//! `Origin` header) always may; pages only from a listed origin, or any page with `*`.

use crate::error::SocketIoError;

/// A list of allowed origins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    any: bool,
    /// Lower-cased, without a trailing `/`.
    listed: Vec<String>,
}

impl Origins {
    /// From a config's `allowed_origins`.
    pub fn new(list: &[String]) -> Origins {
        let listed: Vec<String> = list.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect();
        Origins { any: listed.iter().any(|o| o == "*"), listed }
    }

    /// Whether a page from `origin` may connect (`None`: not a browser, always allowed).
    pub fn allows(&self, origin: Option<&[u8]>) -> bool {
        match origin {
            None => true,
            Some(o) => self.any || self.listed.iter().any(|l| l.as_bytes().eq_ignore_ascii_case(o)),
        }
    }
}

/// `*`, `null` or `scheme://host[:port]` with nothing after.
pub fn check_origin(o: &str) -> Result<(), SocketIoError> {
    let o = o.trim().trim_end_matches('/');
    let ok = o == "*"
        || o == "null"
        || o.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !rest.is_empty()
                && !rest.contains(['/', '?', '#', '@', ' '])
        });
    if ok {
        Ok(())
    } else {
        Err(SocketIoError::Config(format!(
            "allowed_origins: {o:?} is not an origin; write scheme://host[:port] with no path (for example https://dash.example.com), or * for any page"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_origins_need_a_listing_programs_do_not() {
        let none = Origins::new(&[]);
        assert!(none.allows(None));
        assert!(!none.allows(Some(b"http://evil.example")) && !none.allows(Some(b"null")));
        let some = Origins::new(&["http://localhost:3000/".into(), "https://Dash.example.com".into()]);
        assert!(some.allows(Some(b"http://localhost:3000")) && some.allows(Some(b"https://dash.example.com")));
        assert!(!some.allows(Some(b"http://localhost:3001")) && !some.allows(Some(b"https://dash.example.com.evil.example")));
        assert!(Origins::new(&["*".into()]).allows(Some(b"http://anything.example")));
        assert!(check_origin("https://dash.example.com").is_ok() && check_origin("*").is_ok());
        assert!(check_origin("dash.example.com/app").unwrap_err().to_string().contains("is not an origin"));
    }
}
