//! Broker URLs: whatever the text, parsing never panics, and a password placed in the user
//! info of any part of it never shows in the redacted form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use longshore_core::BrokerUrl;

const SECRET: &str = "Zq9Xsecret";

fuzz_target!(|input: (String, String, String)| {
    let (text, scheme, rest) = input;
    // Any text at all.
    let url = BrokerUrl::new(text.as_str());
    let _ = (url.scheme(), url.redacted(), url.alternatives(), format!("{url} {url:?}"));
    // A password in the user info, whatever surrounds it.
    if [&text, &scheme, &rest].iter().any(|part| part.contains(SECRET)) {
        return;
    }
    let url = BrokerUrl::new(format!("{scheme}user:{SECRET}@{rest}"));
    for shown in [url.redacted(), format!("{url}"), format!("{url:?}")] {
        assert!(!shown.contains(SECRET), "{shown}");
    }
    for part in url.alternatives() {
        assert!(!part.redacted().contains(SECRET));
    }
});
