//! Which headers cross the proxy, each way.

use warp::http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::ProxyConfig;

/// Never forwarded in either direction (RFC 9110 §7.6.1, plus the
/// non-standard ones that behave the same).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Never sent upstream: the client's own credential and cookies, what the
/// HTTP client sets itself, and the farm's own headers.
const CLIENT_ONLY: &[&str] = &[
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "cookie",
];

/// The farm's request headers (`x-relogin-session`…) stay with the farm.
const FARM_PREFIX: &str = "x-relogin-";

/// The sticky session key header clients may send.
pub const SESSION: &str = "x-relogin-session";

/// Headers named in `Connection: a, b` are hop-by-hop too.
fn named_by_connection(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The headers sent upstream for `client`'s request, without the account's
/// credential (added per attempt): hop-by-hop, credential, cookie and
/// `x-relogin-*` headers dropped, the configured `headers` comma-merged
/// with the client's value of the same header.
pub fn upstream_request(client: &HeaderMap, config: &ProxyConfig) -> HeaderMap {
    let connection = named_by_connection(client);
    let mut out = HeaderMap::with_capacity(client.len() + config.headers.len());
    for (name, value) in client {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || CLIENT_ONLY.contains(&n)
            || n == config.auth_header
            || n.starts_with(FARM_PREFIX)
            || connection.iter().any(|c| c == n)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    for (name, extra) in &config.headers {
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            continue; // checked when the config was read
        };
        let merged = match out.get(&header).and_then(|v| v.to_str().ok()) {
            Some(theirs) if theirs.split(',').any(|t| t.trim() == extra) => continue,
            Some(theirs) if !theirs.trim().is_empty() => format!("{theirs},{extra}"),
            _ => extra.clone(),
        };
        if let Ok(value) = HeaderValue::from_str(&merged) {
            out.insert(header, value);
        }
    }
    out
}

/// The header that carries the account's token upstream.
pub fn credential(config: &ProxyConfig, token: &str) -> Option<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(config.auth_header.as_bytes()).ok()?;
    let text = if config.auth_scheme.is_empty() {
        token.to_owned()
    } else {
        format!("{} {token}", config.auth_scheme)
    };
    let mut value = HeaderValue::from_str(&text).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

/// Drops from an upstream answer what must not reach the client: hop-by-hop
/// headers and cookies set for the account (clients share accounts).
pub fn clean_response(headers: &mut HeaderMap) {
    for name in named_by_connection(headers) {
        headers.remove(name.as_str());
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    headers.remove("set-cookie");
}

/// The sticky session key: `x-relogin-session`, else `proxy.session_header`.
pub fn session<'h>(headers: &'h HeaderMap, config: &ProxyConfig) -> Option<&'h str> {
    let read = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    read(SESSION).or_else(|| config.session_header.as_deref().and_then(read))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn credentials_cookies_and_hop_by_hop_stay_behind() {
        let mut config = ProxyConfig::default();
        config
            .headers
            .insert("anthropic-beta".into(), "oauth-2025-04-20".into());
        let client = map(&[
            ("authorization", "Bearer client-key"),
            ("x-api-key", "client-key"),
            ("cookie", "a=b"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("host", "farm"),
            ("content-length", "3"),
            ("x-relogin-session", "s1"),
            ("anthropic-beta", "tools-1"),
            ("anthropic-version", "2023-06-01"),
        ]);
        let out = upstream_request(&client, &config);
        let names: Vec<&str> = out.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["anthropic-beta", "anthropic-version"], "{out:?}");
        assert_eq!(out["anthropic-beta"], "tools-1,oauth-2025-04-20");
        // Already present: not repeated.
        let again = upstream_request(&out, &config);
        assert_eq!(again["anthropic-beta"], "tools-1,oauth-2025-04-20");
    }

    #[test]
    fn credential_header_and_scheme() {
        let mut config = ProxyConfig::default();
        let (n, v) = credential(&config, "tok").unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("authorization", "Bearer tok")
        );
        config.auth_header = "x-api-key".into();
        config.auth_scheme = String::new();
        let (n, v) = credential(&config, "tok").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-api-key", "tok"));
        // The client's own x-api-key never goes up, whatever the auth header.
        let out = upstream_request(&map(&[("x-api-key", "client")]), &config);
        assert!(out.is_empty());
    }

    #[test]
    fn response_loses_cookies_and_hop_by_hop() {
        let mut h = map(&[
            ("set-cookie", "s=1"),
            ("connection", "close"),
            ("content-type", "text/event-stream"),
            ("anthropic-ratelimit-unified-status", "allowed"),
        ]);
        clean_response(&mut h);
        let names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "anthropic-ratelimit-unified-status"]
        );
    }

    #[test]
    fn session_from_farm_header_then_configured_one() {
        let mut config = ProxyConfig::default();
        let h = map(&[("x-claude-session", "c1")]);
        assert_eq!(session(&h, &config), None);
        config.session_header = Some("x-claude-session".into());
        assert_eq!(session(&h, &config), Some("c1"));
        let both = map(&[("x-claude-session", "c1"), ("x-relogin-session", "r1")]);
        assert_eq!(session(&both, &config), Some("r1"));
    }
}
