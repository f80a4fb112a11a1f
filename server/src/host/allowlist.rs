//! Which upstreams an app may call: `allowed_outbound_hosts` (Spin's model).
//!
//! An entry is `*` (anything, for development) or `scheme://host[:port]` where the host is a
//! name or IP address (case-insensitive), `*.domain` (any subdomain of `domain`, not `domain`
//! itself) or `*`, and the port is a number or `*`. The scheme says what the entry grants:
//!
//! * `http`, `https`: HTTP fetches with that scheme (port omitted: 80, 443);
//! * `tcp`, `postgres`/`postgresql`, `redis`/`rediss`: TCP sockets (ABI 1.4) to that host and
//!   port (omitted: 5432 for PostgreSQL, 6379 for Redis; `tcp` has no default and needs one);
//! * `*`: both (port omitted: any).
//!
//! The two kinds never grant each other: a `tcp://` entry lets no fetch through, an `https://`
//! entry opens no socket, because a socket to an HTTP server's port would bypass everything the
//! fetch path checks. A request is matched on the URL the app asked for — never on a `Host`
//! header it set — and a socket on the host name the app asked for, before it is resolved.

use std::borrow::Cow;
use std::fmt;

use http::Uri;

/// One parsed entry of an allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: Option<String>,
    host: HostMatch,
    port: Option<u16>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    Subdomain(String),
}

/// An app's allowlist. Empty denies every outbound request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist(Vec<HostPattern>);

impl HostPattern {
    /// Parses one entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let text = entry.trim();
        if text == "*" {
            return Ok(HostPattern {
                scheme: None,
                host: HostMatch::Any,
                port: None,
                text: text.to_owned(),
            });
        }
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            format!(
                "{entry:?} must be `*` or `scheme://host[:port]`, e.g. \"https://api.example.com\""
            )
        })?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "*" => None,
            s @ ("http" | "https" | "tcp" | "postgres" | "postgresql" | "redis" | "rediss") => {
                Some(s.to_owned())
            }
            other => {
                return Err(format!(
                    "{entry:?}: unsupported scheme {other:?}; use http, https, tcp, postgres, \
                     redis or *"
                ));
            }
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!(
                "{entry:?}: give only scheme://host[:port], no path, query or user"
            ));
        }
        let (host, port) =
            split_host_port(rest).ok_or_else(|| format!("{entry:?}: invalid host or port"))?;
        let port = match port {
            None => match scheme.as_deref() {
                Some("http") => Some(80),
                Some("https") => Some(443),
                Some("postgres" | "postgresql") => Some(5432),
                Some("redis" | "rediss") => Some(6379),
                // A bare TCP port could be anything: granting every port by omission would
                // be the wrong default.
                Some("tcp") => {
                    return Err(format!(
                        "{entry:?}: a tcp:// entry needs a port, e.g. \"tcp://{host}:5432\" \
                         (or `:*` for any port)"
                    ));
                }
                _ => None,
            },
            Some("*") => None,
            Some(port) => Some(
                port.parse::<u16>()
                    .map_err(|_| format!("{entry:?}: invalid port {port:?}"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(format!("{entry:?}: a wildcard host is `*.domain`"));
            }
            HostMatch::Subdomain(domain.to_owned())
        } else if host.is_empty() || host.contains('*') {
            return Err(format!("{entry:?}: a wildcard host is `*.domain` or `*`"));
        } else {
            HostMatch::Exact(host)
        };
        Ok(HostPattern {
            scheme,
            host,
            port,
            text: text.to_owned(),
        })
    }

    /// Whether the entry grants a fetch of `scheme://host:port` (`scheme` is `http` or
    /// `https`: socket schemes never equal it).
    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        scheme_ok && self.matches_host_port(host, port)
    }

    /// Whether the entry grants a TCP socket to `host:port`: `*` and socket-scheme entries do.
    fn matches_socket(&self, host: &str, port: u16) -> bool {
        let scheme_ok = match self.scheme.as_deref() {
            None => true,
            Some(scheme) => is_socket_scheme(scheme),
        };
        scheme_ok && self.matches_host_port(host, port)
    }

    fn matches_host_port(&self, host: &str, port: u16) -> bool {
        let port_ok = self.port.is_none_or(|p| p == port);
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(exact) => exact == host,
            HostMatch::Subdomain(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
        };
        host_ok && port_ok
    }
}

/// Whether entries with `scheme` grant sockets rather than fetches.
fn is_socket_scheme(scheme: &str) -> bool {
    matches!(
        scheme,
        "tcp" | "postgres" | "postgresql" | "redis" | "rediss"
    )
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `host[:port]`, with IPv6 literals in brackets (returned without them). Byte searches: this
/// runs on every fetch, and `http`'s `Uri::host` and `Uri::port` cost more than the rest of
/// the check together.
fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let close = rest.bytes().position(|b| b == b']')?;
        let port = match &rest[close + 1..] {
            "" => None,
            port => Some(port.strip_prefix(':')?),
        };
        return Some((&rest[..close], port));
    }
    match text.bytes().rposition(|b| b == b':') {
        Some(colon) => Some((&text[..colon], Some(&text[colon + 1..]))),
        None => Some((text, None)),
    }
}

/// Where an absolute URL goes: what an allowlist is matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// `http` and `https` are lower case however the URL spelled them (`http` parses them so).
    scheme: &'a str,
    host: Cow<'a, str>,
    port: u16,
}

impl<'a> Target<'a> {
    /// The scheme, host and port of `uri`, in lower case, the port defaulting to the scheme's;
    /// `None` when `uri` is not absolute or has no host. User information is skipped.
    pub fn of(uri: &'a Uri) -> Option<Self> {
        let (scheme, authority) = (uri.scheme_str()?, uri.authority()?.as_str());
        let after_user = authority
            .bytes()
            .rposition(|b| b == b'@')
            .map_or(authority, |at| &authority[at + 1..]);
        let (host, port) = split_host_port(after_user)?;
        if host.is_empty() {
            return None;
        }
        let port = match port.and_then(|port| port.parse().ok()) {
            Some(port) => port,
            None if scheme == "https" => 443,
            None => 80,
        };
        Some(Target {
            scheme,
            host: lowercase(host),
            port,
        })
    }
}

impl Allowlist {
    /// Parses every entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| HostPattern::parse(e.as_ref()))
            .collect::<Result<_, _>>()
            .map(Allowlist)
    }

    /// Whether the list lets an app call `target`.
    pub fn allows(&self, target: &Target<'_>) -> bool {
        let Target { scheme, host, port } = target;
        self.0.iter().any(|p| p.matches(scheme, host, *port))
    }

    /// Whether the list lets an app open a TCP socket to `host` (a name as the app wrote it,
    /// or an IP literal, IPv6 with or without brackets) on `port`. Matched before the name is
    /// resolved, so the app's own name is what is granted, whatever it resolves to.
    pub fn allows_socket(&self, host: &str, port: u16) -> bool {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = lowercase(host);
        self.0.iter().any(|p| p.matches_socket(&host, port))
    }

    /// Whether the list is empty (every request denied).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `text` in lower case, copied only when it has an upper-case letter (checked on every fetch).
fn lowercase(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entries: &[&str], url: &str) -> bool {
        let list = Allowlist::parse(entries).expect("valid entries");
        let uri: Uri = url.parse().expect("valid URL");
        list.allows(&Target::of(&uri).expect("absolute URL with a host"))
    }

    #[test]
    fn empty_denies_everything() {
        assert!(!allows(&[], "http://127.0.0.1/"));
    }

    #[test]
    fn star_allows_everything() {
        assert!(allows(&["*"], "http://127.0.0.1:9/x"));
        assert!(allows(&["*"], "https://example.com/"));
    }

    #[test]
    fn exact_entries_match_scheme_host_and_port() {
        let list = ["http://127.0.0.1:8080"];
        assert!(allows(&list, "http://127.0.0.1:8080/a?b"));
        assert!(!allows(&list, "http://127.0.0.1:8081/"));
        assert!(!allows(&list, "https://127.0.0.1:8080/"));
        assert!(!allows(&list, "http://127.0.0.2:8080/"));
        // No port: the scheme's default.
        assert!(allows(
            &["https://API.example.com"],
            "https://api.example.com/v1"
        ));
        assert!(!allows(
            &["https://api.example.com"],
            "https://api.example.com:8443/"
        ));
        assert!(allows(&["http://localhost:*"], "http://localhost:1234/"));
        assert!(allows(&["*://localhost:9000"], "https://localhost:9000/"));
        assert!(allows(&["http://[::1]:80"], "http://[::1]/"));
    }

    #[test]
    fn wildcard_domains_match_subdomains_only() {
        let list = ["https://*.example.com"];
        assert!(allows(&list, "https://a.example.com/"));
        assert!(allows(&list, "https://a.b.example.com/"));
        assert!(!allows(&list, "https://example.com/"));
        assert!(!allows(&list, "https://badexample.com/"));
        assert!(!allows(&list, "https://example.com.evil.net/"));
    }

    #[test]
    fn a_target_is_the_lowercase_scheme_host_and_port_without_user() {
        let target = |url: &str| {
            let uri: Uri = url.parse().expect("valid URL");
            Target::of(&uri).map(|t| (t.scheme.to_owned(), t.host.into_owned(), t.port))
        };
        let owned = |scheme: &str, host: &str, port| Some((scheme.into(), host.into(), port));
        assert_eq!(
            target("http://Example.COM/a"),
            owned("http", "example.com", 80)
        );
        assert_eq!(target("https://a.test/"), owned("https", "a.test", 443));
        assert_eq!(target("HTTPS://A.test/"), owned("https", "a.test", 443));
        assert_eq!(target("http://a.test:8080"), owned("http", "a.test", 8080));
        assert_eq!(target("http://a.test:/x"), owned("http", "a.test", 80));
        assert_eq!(target("https://[::1]:8443/"), owned("https", "::1", 8443));
        assert_eq!(target("http://[::1]/"), owned("http", "::1", 80));
        // The user part cannot pose as the host.
        assert_eq!(
            target("http://allowed.test:1@evil.test:9/"),
            owned("http", "evil.test", 9)
        );
        assert_eq!(target("/relative"), None);
        assert_eq!(target("http://:80/"), None);
    }

    fn allows_socket(entries: &[&str], host: &str, port: u16) -> bool {
        Allowlist::parse(entries)
            .expect("valid entries")
            .allows_socket(host, port)
    }

    #[test]
    fn sockets_are_denied_by_default() {
        assert!(!allows_socket(&[], "127.0.0.1", 5432));
    }

    #[test]
    fn socket_schemes_grant_host_and_port() {
        let list = ["tcp://db.internal:7000"];
        assert!(allows_socket(&list, "db.internal", 7000));
        assert!(allows_socket(&list, "DB.Internal", 7000));
        assert!(!allows_socket(&list, "db.internal", 7001));
        assert!(!allows_socket(&list, "other.internal", 7000));
        assert!(allows_socket(&["tcp://127.0.0.1:*"], "127.0.0.1", 1));
        assert!(allows_socket(&["tcp://*.internal:1"], "a.internal", 1));
        assert!(!allows_socket(&["tcp://*.internal:1"], "internal", 1));
        assert!(allows_socket(&["tcp://[::1]:5"], "::1", 5));
        assert!(allows_socket(&["tcp://[::1]:5"], "[::1]", 5));
    }

    #[test]
    fn database_schemes_default_to_their_ports() {
        for entry in ["postgres://db", "postgresql://db"] {
            assert!(allows_socket(&[entry], "db", 5432), "{entry}");
            assert!(!allows_socket(&[entry], "db", 5433), "{entry}");
        }
        for entry in ["redis://cache", "rediss://cache"] {
            assert!(allows_socket(&[entry], "cache", 6379), "{entry}");
            assert!(!allows_socket(&[entry], "cache", 6380), "{entry}");
        }
        assert!(allows_socket(&["postgres://db:6000"], "db", 6000));
    }

    #[test]
    fn wildcards_grant_sockets_too() {
        assert!(allows_socket(&["*"], "anything.test", 1));
        assert!(allows_socket(&["*://db:5432"], "db", 5432));
        assert!(!allows_socket(&["*://db:5432"], "db", 5433));
        // `*://host` without a port is any port, for fetches and sockets alike.
        assert!(allows_socket(&["*://db"], "db", 9));
    }

    #[test]
    fn http_entries_open_no_socket_and_socket_entries_allow_no_fetch() {
        assert!(!allows_socket(
            &["http://127.0.0.1:8080"],
            "127.0.0.1",
            8080
        ));
        assert!(!allows_socket(
            &["https://*.example.com"],
            "a.example.com",
            443
        ));
        assert!(!allows_socket(&["http://localhost:*"], "localhost", 5432));
        assert!(!allows(&["tcp://127.0.0.1:8080"], "http://127.0.0.1:8080/"));
        assert!(!allows(&["postgres://db"], "http://db:5432/"));
        assert!(!allows(&["redis://cache:80"], "http://cache/"));
        assert!(!allows(&["rediss://cache:443"], "https://cache/"));
    }

    #[test]
    fn bad_entries_say_why() {
        for (entry, needle) in [
            ("example.com", "scheme://host"),
            ("ftp://example.com", "unsupported scheme"),
            ("tcp://db", "\"tcp://db\": a tcp:// entry needs a port"),
            ("tcp://db:port", "invalid port"),
            ("postgres://db/app", "no path"),
            ("redis://ca*che", "wildcard"),
            ("http://example.com/path", "no path"),
            ("http://example.com:http", "invalid port"),
            ("http://ex*ample.com", "wildcard"),
        ] {
            let error = HostPattern::parse(entry).expect_err(entry);
            assert!(error.contains(needle), "{entry}: {error}");
        }
    }
}
