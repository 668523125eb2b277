//! Where a relogin's browser may go: http(s) pages only, and with
//! `browser.allowed_hosts` set, only pages on those hosts (plus the run's
//! authorize and redirect hosts).
//!
//! A login script is written by a person but runs with the farm's rights:
//! a `file:` page would put the host's files in a failure screenshot, a
//! `chrome:` page the browser's internals. Scripts with such a `goto` are
//! refused when attached; this is the run-time side, for what a page does
//! by itself (links, redirects, pop-ups) and for the configured authorize
//! URL. It is enforced three times, since no one mechanism sees everything:
//! a context route aborts requests (it does not see `file:` loads nor
//! redirect hops), each step's page URL is checked afterwards, and no
//! screenshot is taken of a page that fails the check.

use url::Url;

/// Pages that are not navigation targets but states of an empty or failed
/// tab: the first page of a profile, and Chromium's error page (a refused
/// or failed navigation ends there).
const BENIGN_PAGES: [&str; 2] = ["about:blank", "chrome-error://chromewebdata/"];

/// The navigation rule for one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NavigationPolicy {
    /// Lowercase host names; `*.example.com` also matches subdomains.
    /// Empty: any host.
    allowed_hosts: Vec<String>,
}

/// Why a URL is refused (its text names no path or query: those may
/// carry codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not http(s): `file:`, `data:`, `chrome:`, `javascript:`…
    Scheme(String),
    /// An http(s) host outside `browser.allowed_hosts`.
    Host(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Scheme(scheme) => write!(
                f,
                "the browser may only visit http(s) pages, not a {scheme}: URL"
            ),
            Refusal::Host(host) => {
                write!(f, "{host} is not in browser.allowed_hosts")
            }
        }
    }
}

impl NavigationPolicy {
    /// `allowed_hosts` from the config, widened by the hosts this run must
    /// reach (the provider's authorize URL and the redirect URI); an empty
    /// list stays empty (any host).
    pub(crate) fn new<'a>(
        allowed_hosts: &[String],
        run_urls: impl IntoIterator<Item = &'a Url>,
    ) -> Self {
        if allowed_hosts.is_empty() {
            return NavigationPolicy::default();
        }
        let mut hosts: Vec<String> = allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .chain(
                run_urls
                    .into_iter()
                    .filter_map(|u| u.host_str().map(str::to_ascii_lowercase)),
            )
            .collect();
        hosts.sort();
        hosts.dedup();
        NavigationPolicy {
            allowed_hosts: hosts,
        }
    }

    /// Whether the browser may load `url` as a page (a navigation, or the
    /// page it is on).
    pub(crate) fn check_page(&self, url: &str) -> Result<(), Refusal> {
        if BENIGN_PAGES.contains(&url) {
            return Ok(());
        }
        self.check_request(url, true)
    }

    /// Whether a request may go out: any non-http(s) request is refused;
    /// hosts are checked for pages only (a login page may load its scripts,
    /// styles and fonts from elsewhere).
    pub(crate) fn check_request(&self, url: &str, is_page: bool) -> Result<(), Refusal> {
        let parsed = Url::parse(url).map_err(|_| Refusal::Scheme(scheme_of(url)))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Refusal::Scheme(parsed.scheme().to_string()));
        }
        if !is_page || self.allowed_hosts.is_empty() {
            return Ok(());
        }
        let host = parsed.host_str().unwrap_or("").to_ascii_lowercase();
        let allowed = self
            .allowed_hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => host == domain || host.ends_with(&format!(".{domain}")),
                None => host == *pattern,
            });
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Host(host))
        }
    }
}

/// What precedes the first `:` (for a message about an unparsable URL).
fn scheme_of(url: &str) -> String {
    let scheme = url.split(':').next().unwrap_or("");
    match scheme
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        true if !scheme.is_empty() && scheme.len() < url.len() => scheme.to_ascii_lowercase(),
        _ => "non-URL".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn only_web_pages_whatever_the_hosts() {
        let any = NavigationPolicy::new(&[], [&url("http://127.0.0.1:9/auth")]);
        assert_eq!(any, NavigationPolicy::default());
        for ok in [
            "http://127.0.0.1:9/auth",
            "https://elsewhere.test/x?y",
            "about:blank",
            "chrome-error://chromewebdata/",
        ] {
            assert_eq!(any.check_page(ok), Ok(()), "{ok}");
        }
        for (bad, scheme) in [
            ("file:///etc/passwd", "file"),
            ("FILE:///etc/passwd", "file"),
            ("data:text/html,<p>x", "data"),
            ("chrome://settings/", "chrome"),
            ("chrome-error://other/", "chrome-error"),
            ("javascript:alert(1)", "javascript"),
            ("view-source:http://x.test/", "view-source"),
            ("about:version", "about"),
            ("blob:http://x.test/1", "blob"),
            ("ws://x.test/", "ws"),
            ("not a url", "non-URL"),
        ] {
            assert_eq!(
                any.check_page(bad),
                Err(Refusal::Scheme(scheme.into())),
                "{bad}"
            );
            assert!(any.check_request(bad, false).is_err(), "{bad}");
        }
        assert_eq!(
            Refusal::Scheme("file".into()).to_string(),
            "the browser may only visit http(s) pages, not a file: URL"
        );
    }

    #[test]
    fn allowed_hosts_restrict_pages_not_subresources() {
        let policy = NavigationPolicy::new(
            &["Login.Example.com".into(), "*.idp.test".into()],
            [
                &url("http://127.0.0.1:9/auth"),
                &url("http://localhost:8/callback"),
            ],
        );
        for ok in [
            "https://login.example.com/u/login",
            "https://idp.test/",
            "https://a.b.idp.test/",
            "http://127.0.0.1:9/other",
            "http://localhost:8/callback?code=x",
        ] {
            assert_eq!(policy.check_page(ok), Ok(()), "{ok}");
        }
        for (bad, host) in [
            ("https://example.com/", "example.com"),
            ("https://evil-idp.test/", "evil-idp.test"),
            (
                "https://login.example.com.evil.test/",
                "login.example.com.evil.test",
            ),
        ] {
            assert_eq!(policy.check_page(bad), Err(Refusal::Host(host.into())));
            assert_eq!(policy.check_request(bad, false), Ok(()), "a script or font");
        }
        assert_eq!(
            Refusal::Host("example.com".into()).to_string(),
            "example.com is not in browser.allowed_hosts"
        );
    }
}
