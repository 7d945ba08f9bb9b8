//! A small client of server-sent events over HTTP/1.1, as a browser's `EventSource` reads
//! them: for tests of the job-status stream.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// Its `id:`.
    pub id: Option<String>,
    /// Its `event:`.
    pub event: Option<String>,
    /// Its `data:` lines, joined.
    pub data: String,
}

/// An open event stream.
pub struct SseStream {
    reader: BufReader<TcpStream>,
    /// Bytes left in the current chunk of the chunked body.
    chunk_left: usize,
    /// Body bytes read but not yet split into lines.
    buffer: Vec<u8>,
    ended: bool,
}

impl SseStream {
    /// Opens `GET path` on `address` with `Accept: text/event-stream` (and `Last-Event-ID`
    /// when given); panics unless the answer is `200`.
    pub async fn open(address: SocketAddr, path: &str, last_event_id: Option<u64>) -> Self {
        let mut stream = TcpStream::connect(address)
            .await
            .unwrap_or_else(|error| panic!("connect to {address}: {error}"));
        let resume = last_event_id
            .map(|id| format!("last-event-id: {id}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {address}\r\naccept: text/event-stream\r\n{resume}\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .await
            .expect("the status line");
        assert!(
            status.contains(" 200 "),
            "the event stream answers 200, not {status:?}"
        );
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.expect("a header line");
            if line.trim().is_empty() {
                break;
            }
        }
        Self {
            reader,
            chunk_left: 0,
            buffer: Vec::new(),
            ended: false,
        }
    }

    /// More body bytes into the buffer; false at the end of the body.
    async fn fill(&mut self) -> bool {
        if self.ended {
            return false;
        }
        if self.chunk_left == 0 {
            let mut size = String::new();
            if self.reader.read_line(&mut size).await.unwrap_or(0) == 0 {
                self.ended = true;
                return false;
            }
            if size.trim().is_empty() {
                // The CRLF after the previous chunk.
                size.clear();
                if self.reader.read_line(&mut size).await.unwrap_or(0) == 0 {
                    self.ended = true;
                    return false;
                }
            }
            self.chunk_left = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if self.chunk_left == 0 {
                self.ended = true;
                return false;
            }
        }
        let mut bytes = vec![0; self.chunk_left];
        let read = self.reader.read(&mut bytes).await.unwrap_or(0);
        if read == 0 {
            self.ended = true;
            return false;
        }
        self.chunk_left -= read;
        self.buffer.extend_from_slice(&bytes[..read]);
        true
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(
                    String::from_utf8_lossy(&line)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                );
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next event (comments and keep-alives skipped); `None` once the stream ended.
    /// Panics after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        tokio::time::timeout(timeout, async {
            let mut event = SseEvent {
                id: None,
                event: None,
                data: String::new(),
            };
            let mut seen = false;
            loop {
                let line = self.line().await?;
                if line.is_empty() {
                    if seen {
                        return Some(event);
                    }
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => event.id = Some(value.to_owned()),
                    "event" => event.event = Some(value.to_owned()),
                    "data" => {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                    }
                    _ => continue,
                }
                seen = true;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no event within {timeout:?}"))
    }

    /// Every event until the stream ends (the job finished).
    pub async fn to_end(&mut self, timeout: Duration) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next(timeout).await {
            events.push(event);
        }
        events
    }
}
