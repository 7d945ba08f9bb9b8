//! [`BrokerUrl`]: a broker address whose password never shows in `Debug` or logs.

use std::fmt;

/// A broker URL (`memory://`, `amqp://user:pass@host/vhost`, `sqs://queue`, an SQS queue URL).
///
/// `Display` and `Debug` print the password as `***`; [`BrokerUrl::expose`] gives the
/// real string to the client that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl(String);

impl BrokerUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The scheme, lowercased: `memory`, `amqp`, `amqps`, `sqs`, `https`, ...
    pub fn scheme(&self) -> String {
        self.0
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The URLs a comma-separated list names (the nodes of a cluster), each trimmed; a
    /// single URL gives itself.
    pub fn alternatives(&self) -> Vec<BrokerUrl> {
        let urls: Vec<BrokerUrl> = self
            .0
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(BrokerUrl::new)
            .collect();
        if urls.is_empty() {
            vec![self.clone()]
        } else {
            urls
        }
    }

    /// The URL with its password, for the broker client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, however malformed the URL is:
    /// everything from the first `:` that does not start `://` up to the last `@` counts as
    /// a password (`amqps//guest:hunter2@host`, `guest:hunter2@host`, a password holding
    /// `@` or `/`). Each URL of a comma-separated list is redacted on its own.
    pub fn redacted(&self) -> String {
        self.0
            .split(',')
            .map(redact_one)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// [`BrokerUrl::redacted`] for one URL.
fn redact_one(url: &str) -> String {
    let Some(last_at) = url.rfind('@') else {
        return url.to_owned();
    };
    let colon = url[..last_at]
        .match_indices(':')
        .map(|(at, _)| at)
        .find(|&at| !url[at..].starts_with("://"));
    match colon {
        Some(at) => format!("{}:***{}", &url[..at], &url[last_at..]),
        None => url.to_owned(),
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({:?})", self.redacted())
    }
}

impl From<&str> for BrokerUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<String> for BrokerUrl {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let url = BrokerUrl::new("amqp://app:s3cret@rabbit:5672/prod?heartbeat=10");
        assert_eq!(
            url.to_string(),
            "amqp://app:***@rabbit:5672/prod?heartbeat=10"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            url.expose(),
            "amqp://app:s3cret@rabbit:5672/prod?heartbeat=10"
        );
        assert_eq!(url.scheme(), "amqp");
    }

    #[test]
    fn urls_without_passwords_are_unchanged() {
        for plain in [
            "memory://",
            "sqs://emails",
            "amqp://guest@localhost",
            "not a url",
        ] {
            assert_eq!(BrokerUrl::new(plain).to_string(), plain);
        }
        // An `@` in the path is not userinfo.
        assert_eq!(
            BrokerUrl::new("amqp://host/v@host").to_string(),
            "amqp://host/v@host"
        );
    }

    #[test]
    fn lists_of_urls_hide_every_password() {
        let list = BrokerUrl::new("amqp://a:one@n1:5672/%2f, amqp://b:two@n2:5673/%2f");
        assert_eq!(
            list.to_string(),
            "amqp://a:***@n1:5672/%2f, amqp://b:***@n2:5673/%2f"
        );
        let nodes = list.alternatives();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].expose(), "amqp://b:two@n2:5673/%2f");
        assert_eq!(BrokerUrl::new("memory://").alternatives().len(), 1);
    }

    #[test]
    fn mistyped_urls_hide_their_passwords_too() {
        for (typed, shown) in [
            ("amqps//guest:hunter2@host", "amqps//guest:***@host"),
            // One slash short: more is hidden than the password, never less.
            (
                "amqp:/guest:hunter2@host:5672/%2f",
                "amqp:***@host:5672/%2f",
            ),
            ("guest:hunter2@host", "guest:***@host"),
            // Found by `fuzz/fuzz_targets/broker_url.rs`: a `?` before the user info.
            ("?user:hunter2@", "?user:***@"),
            ("user:hunter2@x://y:z@w", "user:***@w"),
            ("amqp://u:pa/ss:hunter2@h", "amqp://u:***@h"),
            ("amqp://guest:hun@ter2@host/v", "amqp://guest:***@host/v"),
        ] {
            let url = BrokerUrl::new(typed);
            assert_eq!(url.to_string(), shown);
            assert!(
                !format!("{url:?}").contains("hunter2") && !format!("{url:?}").contains("ter2")
            );
        }
    }
}

/// A secret (an AWS secret key, a token): `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod secret_tests {
    use super::Secret;

    #[test]
    fn secrets_never_show() {
        let secret = Secret::new("wJalrXUtnFEMI");
        assert_eq!(format!("{secret} {secret:?}"), "*** Secret(***)");
        assert_eq!(secret.expose(), "wJalrXUtnFEMI");
    }
}
