//! A real headless Chromium for page tests, driven over WebDriver (W3C) through Debian's
//! `chromedriver`. `scripts/test` installs `chromium` and `chromium-driver` when missing
//! (and exports `CHROMEDRIVER` and `CHROMIUM`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::eventually;

/// A browser session; the driver stops when this is dropped.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `variable`'s value, or `default` found on `PATH` (chromedriver wants absolute paths).
fn program(variable: &str, default: &str) -> String {
    if let Ok(path) = std::env::var(variable) {
        return path;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(default))
                .find(|path| path.is_file())
        })
        .map_or_else(|| default.to_owned(), |path| path.display().to_string())
}

/// One WebDriver call: the status code and the JSON answer.
async fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    try_call(port, method, path, body)
        .await
        .unwrap_or_else(|error| panic!("chromedriver on port {port}: {error}"))
}

/// One WebDriver call, or why it could not be made.
async fn try_call(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(request.as_bytes()).await?;
    let (status, body) = tokio::time::timeout(Duration::from_secs(60), read_response(&mut stream))
        .await
        .map_err(|_| std::io::Error::other("no answer within 60 s"))??;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// Reads one response: its status and body (by `content-length`, chunks, or to the end).
async fn read_response(stream: &mut tokio::net::TcpStream) -> std::io::Result<(u16, String)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::Error::other(
                "the connection closed before the head ended",
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let length = head.lines().find_map(|line| {
        line.strip_prefix("content-length:")
            .and_then(|n| n.trim().parse::<usize>().ok())
    });
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &buffer[head_end..];
        let complete = match length {
            Some(length) => body.len() >= length,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = String::from_utf8_lossy(&buffer[head_end..]).into_owned();
    Ok((status, if chunked { dechunk(&body) } else { body }))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, or fails saying how to install
    /// them.
    pub async fn start() -> Self {
        let chromedriver = program("CHROMEDRIVER", "chromedriver");
        let chromium = program("CHROMIUM", "chromium");
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start `{chromedriver}` ({error}): install Debian's chromium and \
                     chromium-driver (`apt-get install chromium chromium-driver`; scripts/test does)"
                )
            });
        eventually(
            Duration::from_secs(30),
            "chromedriver to answer",
            || async move {
                match try_call(port, "GET", "/status", None).await {
                    Ok((200, answer)) if answer["value"]["ready"] == true => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            },
        }}});
        let (status, answer) = call(port, "POST", "/session", Some(&capabilities)).await;
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session ({status}): {answer}"))
            .to_owned();
        Self {
            driver,
            port,
            session,
        }
    }

    async fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let (status, answer) = call(self.port, method, &path, body.as_ref()).await;
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer["value"].clone()
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its result.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The visible text of the first element matching `css` (empty when there is none).
    pub async fn text(&self, css: &str) -> String {
        self.eval(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The texts of the cells of the first table row matching `css`.
    pub async fn cells(&self, css: &str) -> Vec<String> {
        let cells = self
            .eval(
                "const r = document.querySelector(arguments[0]); \
                 return r ? Array.from(r.cells).map(c => c.innerText.trim()) : [];",
                json!([css]),
            )
            .await;
        cells
            .as_array()
            .map(|cells| {
                cells
                    .iter()
                    .map(|c| c.as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until the cells of the row `css` satisfy `check`, up to `timeout`.
    pub async fn await_cells(
        &self,
        css: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        eventually(timeout, what, || async {
            let cells = self.cells(css).await;
            if check(&cells) {
                Ok(cells)
            } else {
                Err(format!("{cells:?}"))
            }
        })
        .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .session_call(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element `{css}`: {found}"))
            .to_owned()
    }

    /// Clicks the first element matching `css`, as a user would.
    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Types `text` into the first element matching `css`, as a user would.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.session_call(
            "POST",
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Waits until the text of `css` satisfies `check`, up to `timeout`; the text.
    pub async fn await_text(
        &self,
        css: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&str) -> bool,
    ) -> String {
        eventually(timeout, what, || async {
            let text = self.text(css).await;
            if check(&text) { Ok(text) } else { Err(text) }
        })
        .await
    }

    /// A PNG screenshot of the page.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.session_call("GET", "/screenshot", None).await;
        base64_decode(encoded.as_str().unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (which closes Chromium), then the driver.
        use std::io::{Read, Write};
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                stream,
                "DELETE /session/{} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nconnection: close\r\n\r\n",
                self.session, self.port
            );
            let _ = stream.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in text.bytes() {
        let Some(value) = ALPHABET.iter().position(|&a| a == byte) else {
            continue;
        };
        buffer = (buffer << 6) | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_and_chunks_decode() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::dechunk("5\r\nhello\r\n0\r\n\r\n"), "hello");
    }
}
