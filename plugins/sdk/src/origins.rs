//! Which web pages may call a plugin or the host: the origins a browser sends in `Origin`,
//! listed in a config (`allowed_origins`), `*` for any page. Programs send no `Origin`.

/// A list of allowed origins, normalised once (lower case, no trailing `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    any: bool,
    listed: Vec<String>,
}

impl Origins {
    /// From a config's list; `*` allows any page.
    pub fn new(list: &[String]) -> Origins {
        let listed: Vec<String> = list.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect();
        Origins { any: listed.iter().any(|o| o == "*"), listed }
    }

    /// Whether `*` is in the list.
    pub fn any(&self) -> bool {
        self.any
    }

    /// Whether a page from `origin` is listed (or `*` is).
    pub fn lists(&self, origin: &[u8]) -> bool {
        self.any || self.listed.iter().any(|l| l.as_bytes().eq_ignore_ascii_case(origin))
    }

    /// Whether a request with this `Origin` header may go on: one without (a program, not a
    /// browser) always may, a page only from a listed origin.
    pub fn allows(&self, origin: Option<&[u8]>) -> bool {
        origin.is_none_or(|o| self.lists(o))
    }
}

/// `scheme://host[:port]` with nothing after.
pub fn is_origin(o: &str) -> bool {
    o.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            && !rest.is_empty()
            && !rest.contains(['/', '?', '#', '@', ' '])
    })
}

/// Checks one entry of the list in config field `field`: `*`, `null` or an origin (a
/// trailing `/` is allowed).
pub fn check_origin(field: &str, o: &str) -> Result<(), String> {
    let o = o.trim().trim_end_matches('/');
    if o == "*" || o == "null" || is_origin(o) {
        Ok(())
    } else {
        Err(format!(
            "{field}: {o:?} is not an origin; write scheme://host[:port] with no path (for example https://dash.example.com), or * for any page"
        ))
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
        assert!(check_origin("allowed_origins", "https://dash.example.com").is_ok() && check_origin("f", "*").is_ok());
        assert!(check_origin("allowed_origins", "dash.example.com/app")
            .unwrap_err()
            .contains("allowed_origins: \"dash.example.com/app\" is not an origin"));
    }
}
