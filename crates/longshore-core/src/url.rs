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

    /// The URL with its password, for the broker client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                if userinfo.contains(':') {
                    format!("{scheme}://{user}:***@{host}{tail}")
                } else {
                    format!("{scheme}://{user}@{host}{tail}")
                }
            }
            None => self.0.clone(),
        }
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
