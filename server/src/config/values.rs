//! What a setting's value can be: sizes, counts, durations, addresses, pub/sub backends and
//! overflow policies, mounts, app settings and host lists.
//!
//! The command line reads a value with a `parse_*` function (clap's `value_parser`) or
//! `FromStr`; the file reads it with a newtype that implements `Deserialize`. A value that can
//! be written in both places is parsed by the same code here, so it means the same in both.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::Allowlist;
use crate::host::pubsub::{Backend, Overflow};

// Sizes.

/// A size: bytes, or a number with a unit: `k`/`KB` (1000), `KiB` (1024), `MB`, `MiB`, `GB`,
/// `GiB`.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_size: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{value:?} is not a size; expected bytes (65536) or a size like 64KiB, 10MiB, 1GB"
            ));
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a size; expected a number before the unit"))?;
    let bytes = number * unit_size as f64;
    if !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("{value:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// A size in bytes: a whole number, or a string with a unit (`"64KiB"`, `"10MiB"`, `"1GB"`).
#[derive(Debug)]
pub(super) struct Size(pub(super) u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = u64;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes (65536) or with a unit (\"64KiB\", \"10MiB\")")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::custom(format!("{v} is not a size")))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                parse_size(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor).map(Size)
    }
}

// Counts.

/// A count of at least 1 on the command line.
pub(super) fn parse_count(value: &str) -> Result<usize, String> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{value:?} is not a whole number of at least 1"))
}

/// A count of at least 1.
#[derive(Debug)]
pub(super) struct Count(pub(super) usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(deserializer)?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .map(Count)
            .ok_or_else(|| de::Error::custom(format!("{n} is not a count of at least 1")))
    }
}

// Durations.

/// A duration of 0 or more: seconds as a decimal (`30`, `0.5`) or a humantime string
/// (`500ms`, `30s`, `2m`, `1h 30m`).
pub(super) fn parse_duration(value: &str) -> Result<Duration, String> {
    let text = value.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return secs_f64(secs, value);
    }
    humantime::parse_duration(text).map_err(|err| {
        format!(
            "{value:?} is not a duration ({err}); expected seconds (30, 0.5) or a duration like \
             500ms, 30s, 2m"
        )
    })
}

/// [`parse_duration`], but more than 0.
pub(super) fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    parse_duration(value).and_then(check_positive)
}

fn check_positive(duration: Duration) -> Result<Duration, String> {
    if duration.is_zero() {
        Err("the time limit must be more than 0".to_owned())
    } else {
        Ok(duration)
    }
}

/// `secs` seconds; `written` is how the user wrote it, for the error.
fn secs_f64(secs: f64, written: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{written:?} is not a valid duration (0 or more seconds)"))
}

/// A duration of 0 or more: a number of seconds or a humantime string.
#[derive(Debug)]
pub(super) struct Secs(pub(super) Duration);

/// A duration of more than 0: a number of seconds or a humantime string.
#[derive(Debug)]
pub(super) struct PositiveSecs(pub(super) Duration);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor).map(Secs)
    }
}

impl<'de> Deserialize<'de> for PositiveSecs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let duration = deserializer.deserialize_any(DurationVisitor)?;
        check_positive(duration)
            .map(PositiveSecs)
            .map_err(de::Error::custom)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number of seconds (30, 0.5) or a duration string (\"500ms\", \"2m\")")
    }

    fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
        u64::try_from(secs).map(Duration::from_secs).map_err(|_| {
            E::custom(format!(
                "{secs} is not a valid duration (0 or more seconds)"
            ))
        })
    }

    fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(secs))
    }

    fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Duration, E> {
        secs_f64(secs, &secs.to_string()).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_duration(text).map_err(E::custom)
    }
}

/// `"off"`, or a duration of 0 or more (`ws_reload_grace`).
#[derive(Debug)]
pub(super) struct OffOrSecs(pub(super) Option<Duration>);

/// `"off"`, or a duration of more than 0 (`ws_idle_timeout`).
#[derive(Debug)]
pub(super) struct OffOrPositiveSecs(pub(super) Option<Duration>);

/// Reads `"off"` or a duration, with the duration's own error for anything else.
fn off_or_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    struct OffOrDuration;

    impl Visitor<'_> for OffOrDuration {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(
                "\"off\", a number of seconds (30, 0.5) or a duration string (\"500ms\", \"2m\")",
            )
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            DurationVisitor.visit_i64(v).map(Some)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            DurationVisitor.visit_u64(v).map(Some)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            DurationVisitor.visit_f64(v).map(Some)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v.trim() == "off" {
                return Ok(None);
            }
            DurationVisitor.visit_str(v).map(Some)
        }
    }

    deserializer.deserialize_any(OffOrDuration)
}

impl<'de> Deserialize<'de> for OffOrSecs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        off_or_duration(deserializer).map(OffOrSecs)
    }
}

impl<'de> Deserialize<'de> for OffOrPositiveSecs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match off_or_duration(deserializer)? {
            Some(duration) => check_positive(duration)
                .map(|d| OffOrPositiveSecs(Some(d)))
                .map_err(|e| de::Error::custom(format!("{e} (write \"off\" for none)"))),
            None => Ok(OffOrPositiveSecs(None)),
        }
    }
}

/// A WebSocket close code an endpoint may send (`ws_shutdown_code`): 1000-1003, 1007-1014 or
/// 3000-4999.
#[derive(Debug)]
pub(super) struct CloseCode(pub(super) u16);

impl<'de> Deserialize<'de> for CloseCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(deserializer)?;
        u16::try_from(n)
            .ok()
            .filter(|code| crate::host::websocket::sendable_close_code(*code))
            .map(CloseCode)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "{n} is not a close code a server may send (1000-1003, 1007-1014, 3000-4999)"
                ))
            })
    }
}

/// A list of WebSocket origins (`ws_origins`), each `scheme://host` or `scheme://host:port`,
/// kept lower-cased.
#[derive(Debug)]
pub(super) struct Origins(pub(super) Vec<String>);

impl<'de> Deserialize<'de> for Origins {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(deserializer)?;
        entries
            .into_iter()
            .map(|entry| {
                let origin = entry.trim().to_ascii_lowercase();
                let valid = origin.split_once("://").is_some_and(|(scheme, rest)| {
                    !scheme.is_empty()
                        && scheme
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                        && !rest.is_empty()
                        && !rest.contains(['/', '?', '#', ' '])
                });
                if valid {
                    Ok(origin)
                } else {
                    Err(de::Error::custom(format!(
                        "{entry:?} is not an origin; expected scheme://host or scheme://host:port, \
                         as browsers send it (\"https://app.example.com\")"
                    )))
                }
            })
            .collect::<Result<_, _>>()
            .map(Origins)
    }
}

// Addresses.

/// A socket address such as `127.0.0.1:8080` or `[::1]:8080`.
pub(super) fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value.trim().parse().map_err(|_| {
        format!("{value:?} is not a socket address; expected IP:PORT like \"127.0.0.1:8080\"")
    })
}

/// A socket address written as a string, e.g. `"127.0.0.1:8080"`.
#[derive(Debug)]
pub(super) struct Addr(pub(super) SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_addr(&text).map(Addr).map_err(de::Error::custom)
    }
}

/// An admin endpoint address, or `off`: the value of `--admin-listen` and `admin_listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// No admin endpoint.
    Off,
    /// Serve the admin endpoint on this address.
    Addr(SocketAddr),
}

impl AdminListen {
    /// The address, or `None` for `off`.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            AdminListen::Off => None,
            AdminListen::Addr(addr) => Some(addr),
        }
    }
}

impl FromStr for AdminListen {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if value.trim().eq_ignore_ascii_case("off") {
            Ok(AdminListen::Off)
        } else {
            value.trim().parse().map(AdminListen::Addr).map_err(|_| {
                format!(
                    "{value:?} is neither a socket address nor `off`; expected IP:PORT like \
                     \"127.0.0.1:9090\" or \"off\""
                )
            })
        }
    }
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminListen::Off => f.write_str("off"),
            AdminListen::Addr(addr) => addr.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for AdminListen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

// Pub/sub.

/// The pub/sub backend on the command line: `memory` or a `redis://` URL.
pub(super) fn parse_pubsub(value: &str) -> Result<Backend, String> {
    value.parse()
}

/// `pubsub`: `"memory"` or a `redis://` URL.
#[derive(Debug)]
pub(super) struct PubSubBackend(pub(super) Backend);

impl<'de> Deserialize<'de> for PubSubBackend {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_pubsub(&text)
            .map(PubSubBackend)
            .map_err(de::Error::custom)
    }
}

/// `pubsub_overflow`: `"drop-oldest"` or `"close"`.
#[derive(Debug)]
pub(super) struct OverflowPolicy(pub(super) Overflow);

impl<'de> Deserialize<'de> for OverflowPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map(OverflowPolicy).map_err(de::Error::custom)
    }
}

// Mounts.

/// A path prefix to mount an app at, checked by [`check_mount`].
#[derive(Debug)]
pub(super) struct Mount(pub(super) String);

impl<'de> Deserialize<'de> for Mount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mount = String::deserialize(deserializer)?;
        check_mount(&mount)
            .map_err(|why| de::Error::custom(format!("invalid mount {mount:?}: {why}")))?;
        Ok(Mount(mount))
    }
}

/// Why `mount` cannot be a mount path, if it cannot.
fn check_mount(mount: &str) -> Result<(), &'static str> {
    let Some(rest) = mount.strip_prefix('/') else {
        return Err("it must start with '/'");
    };
    if rest.is_empty() {
        return Err("'/' is where Berth lists the apps; mount the app under a path like \"/hi\"");
    }
    if mount.contains(['?', '#']) {
        return Err("it must not contain '?' or '#'");
    }
    if mount.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it must not contain whitespace or control characters");
    }
    if rest.split('/').any(|segment| segment.is_empty()) {
        return Err("it must not end with '/' or contain \"//\"");
    }
    if rest
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err("it must not contain \".\" or \"..\" segments");
    }
    Ok(())
}

// App settings.

/// A value of `[apps.<name>.settings]`: a string, or a number or boolean as its TOML text.
#[derive(Debug)]
pub(super) struct Setting(pub(super) String);

impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SettingVisitor;

        impl Visitor<'_> for SettingVisitor {
            type Value = String;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
                Ok(v.to_string())
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
                Ok(v.to_string())
            }
        }

        deserializer.deserialize_any(SettingVisitor).map(Setting)
    }
}

// Host lists.

/// A comma-separated allowlist on the command line.
pub(super) fn parse_allow_list(value: &str) -> Result<Allowlist, String> {
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    Allowlist::parse(&entries)
}

/// An `allowed_outbound_hosts` list, each entry checked.
#[derive(Debug)]
pub(super) struct Hosts(pub(super) Allowlist);

impl<'de> Deserialize<'de> for Hosts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(deserializer)?;
        Allowlist::parse(&entries)
            .map(Hosts)
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::test_support::{load, load_err};

    #[test]
    fn durations_as_numbers_and_strings() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("inf").is_err());
        assert!(parse_positive_duration("0s").is_err());

        let toml = r#"
            drain_timeout = 0
            outbound_timeout = 0.5
            request_timeout = "2m"
            hook_timeout = "1.5"
        "#;
        let config = load("durations", toml, &[]).unwrap();
        assert_eq!(config.drain_timeout, Duration::ZERO);
        assert_eq!(config.outbound_timeout, Duration::from_millis(500));
        assert_eq!(config.request_timeout, Duration::from_secs(120));
        assert_eq!(config.hook_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn bad_address() {
        let message = load_err("bad-address", "listen = \"nope\"\n");
        assert!(message.contains("line 1"), "{message}");
        assert!(message.contains("key `listen`"), "{message}");
        assert!(message.contains("\"nope\""), "{message}");
    }

    #[test]
    fn bad_mount() {
        let message = load_err("bad-mount", "[apps.hello]\n\nmount = \"hi\"\n");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("key `apps.hello.mount`"), "{message}");
        assert!(message.contains("\"hi\""), "{message}");
        for bad in ["/", "/hi/", "/a//b", "/a?b", "/a#b", "/a b", "/a/../b", ""] {
            assert!(check_mount(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["/hi", "/a/b", "/a-b_c.d", "/%20"] {
            assert_eq!(check_mount(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn zero_request_timeout_is_an_error() {
        let message = load_err("zero", "[apps.a]\nrequest_timeout = 0\n");
        assert!(
            message.contains("key `apps.a.request_timeout`"),
            "{message}"
        );
        assert!(message.contains("more than 0"), "{message}");
    }
}
