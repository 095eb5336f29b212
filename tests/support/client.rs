//! A raw HTTP/1.1 client: writes exact bytes on a TCP stream and reads one
//! response back, so tests can send request targets and header sets a normal
//! client would "fix" (`\`, `%2F`, control chars, absolute-form, `OPTIONS *`,
//! duplicate headers).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long [`raw_request`] and [`get`] wait for a whole response.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One parsed HTTP/1.x response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    /// In wire order, names as sent (case kept), repeated headers repeated.
    pub headers: Vec<(String, String)>,
    /// Decoded body (chunked framing removed).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body text when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// The status line and headers of a response, before its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A TCP connection with a read buffer, for tests that need more than one
/// exchange: keep-alive, upgrades, reading a streamed body piece by piece.
/// Nothing here has a timeout; wrap calls in `tokio::time::timeout` as needed.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> io::Result<RawConn> {
        Ok(RawConn {
            stream: TcpStream::connect(addr).await?,
            buf: Vec::new(),
        })
    }

    /// Writes these exact bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Shuts down the write half (the peer reads EOF).
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Whatever bytes are buffered, or the next bytes that arrive; empty at EOF.
    pub async fn read_some(&mut self) -> io::Result<Vec<u8>> {
        if self.buf.is_empty() {
            self.fill().await?;
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads exactly `n` bytes (errors on EOF before that).
    pub async fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(eof("before the expected bytes"));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads until EOF.
    pub async fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        while self.fill().await? != 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// True when the peer closed the connection (EOF) with nothing buffered.
    /// Errors such as a reset count as closed too.
    pub async fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        !matches!(self.fill().await, Ok(n) if n > 0)
    }

    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).take(pos).collect();
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.fill().await? == 0 {
                return Err(eof("in the middle of a line"));
            }
        }
    }

    /// Reads a status line and headers. 1xx responses other than 101 are
    /// skipped.
    pub async fn read_head(&mut self) -> io::Result<ResponseHead> {
        loop {
            let status_line = self.read_line().await?;
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or_default();
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .filter(|_| version.starts_with("HTTP/1."))
                .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
            let mut headers = Vec::new();
            loop {
                let line = self.read_line().await?;
                if line.is_empty() {
                    break;
                }
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            return Ok(ResponseHead { status, headers });
        }
    }

    /// Reads the body that follows `head`: none for 1xx/204/304 or a HEAD
    /// request, chunked, Content-Length, or until EOF.
    pub async fn read_body(
        &mut self,
        head: &ResponseHead,
        head_request: bool,
    ) -> io::Result<Vec<u8>> {
        if head_request || head.status < 200 || head.status == 204 || head.status == 304 {
            return Ok(Vec::new());
        }
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            let mut body = Vec::new();
            while let Some(chunk) = self.read_chunk().await? {
                body.extend_from_slice(&chunk);
            }
            return Ok(body);
        }
        if let Some(len) = head.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| invalid(format!("bad content-length {len:?}")))?;
            return self.read_exact(len).await;
        }
        self.read_to_end().await
    }

    /// Reads one chunk of a chunked body; `None` after the last chunk (the
    /// trailers are read and dropped).
    pub async fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let size_line = self.read_line().await?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_line:?}")))?;
        if size == 0 {
            while !self.read_line().await?.is_empty() {}
            return Ok(None);
        }
        let data = self.read_exact(size).await?;
        if self.read_exact(2).await? != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF".into()));
        }
        Ok(Some(data))
    }

    /// Reads one whole response.
    pub async fn read_response(&mut self, head_request: bool) -> io::Result<RawResponse> {
        let head = self.read_head().await?;
        let body = self.read_body(&head, head_request).await?;
        Ok(RawResponse {
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    /// Writes `request` and reads one response.
    pub async fn request(&mut self, request: &[u8]) -> io::Result<RawResponse> {
        self.write(request).await?;
        self.read_response(request.starts_with(b"HEAD ")).await
    }
}

/// Connects, writes `request` exactly, reads one response (HEAD requests are
/// recognised by their first bytes), within [`DEFAULT_TIMEOUT`].
pub async fn raw_request(addr: SocketAddr, request: impl AsRef<[u8]>) -> io::Result<RawResponse> {
    raw_request_timeout(addr, request, DEFAULT_TIMEOUT).await
}

/// [`raw_request`] with its own time limit (an elapsed limit is `TimedOut`).
pub async fn raw_request_timeout(
    addr: SocketAddr,
    request: impl AsRef<[u8]>,
    limit: Duration,
) -> io::Result<RawResponse> {
    let request = request.as_ref();
    let exchange = async {
        let mut conn = RawConn::connect(addr).await?;
        conn.request(request).await
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no complete response in time"))?
}

/// `GET {path} HTTP/1.1` with `Host: {addr}`, `Connection: close` and the
/// given extra headers. Panics on I/O errors (use [`raw_request`] to see them).
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    let request = build_request("GET", addr, path, headers, b"");
    raw_request(addr, request)
        .await
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// Bytes of a request with `Host: {addr}`, `Connection: close`, the given
/// headers in order, and `Content-Length` when `body` is not empty.
pub fn build_request(
    method: &str,
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    request_bytes(
        method,
        &addr.to_string(),
        "Connection: close\r\n",
        target,
        headers,
        body,
    )
}

/// A request that leaves the connection open for the next one.
pub fn build_keep_alive_request(method: &str, host: &str, target: &str, body: &[u8]) -> Vec<u8> {
    request_bytes(method, host, "", target, &[], body)
}

fn request_bytes(
    method: &str,
    host: &str,
    connection: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{connection}");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn eof(context: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {context}"),
    )
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
