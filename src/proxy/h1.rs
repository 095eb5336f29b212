//! HTTP/1.1 toward the upstream, as bytes (RFC 9112): the request head and
//! body framing scopegate writes, and the response head and body framing it
//! reads. No I/O here; `super::conn` moves the bytes.
//!
//! The response head is parsed by `httparse` (hyper's parser) into an
//! `http::Response` whose header values share the read buffer; bodies are
//! decoded incrementally from the same buffer, so a small response costs no
//! copy and, on a pooled connection, no allocation for its bytes.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use std::mem::MaybeUninit;

/// Header fields per response head (and trailer section) at most: hyper's
/// default, which the client side has always had.
pub(crate) const MAX_HEADERS: usize = 100;
/// Bytes per response head at most (Envoy's default is 60 KiB).
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Bytes per chunk-size line at most, extensions included.
const MAX_CHUNK_LINE: usize = 1024;
/// Bytes per trailer section at most.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// What went wrong on an upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed upstream response: {0}")]
    Malformed(&'static str),
    #[error("the upstream closed the connection {0}")]
    Closed(&'static str),
    #[error("the client's request body failed: {0}")]
    RequestBody(#[source] hyper::Error),
}

/// How a request body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body (a `content-length: 0` the client sent stays).
    None,
    /// `content-length` bytes as they come.
    Length,
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// Chooses the framing of the upstream request from what the client's body
/// knows about itself, and makes the framing headers say so: a body of
/// known length keeps (or gets) its `content-length`; any other body is
/// chunked, without a `content-length`. `transfer-encoding` was removed with
/// the other hop-by-hop headers.
pub(crate) fn request_framing(
    headers: &mut HeaderMap,
    body: &impl http_body::Body,
) -> RequestFraming {
    if body.is_end_stream() {
        return RequestFraming::None;
    }
    match body.size_hint().exact() {
        Some(n) => {
            if content_length(headers) != Ok(Some(n)) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            RequestFraming::Length
        }
        None => {
            headers.remove(header::CONTENT_LENGTH);
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            RequestFraming::Chunked
        }
    }
}

/// Appends `METHOD target HTTP/1.1`, the header fields and the empty line.
pub(crate) fn encode_request_head(
    out: &mut Vec<u8>,
    method: &http::Method,
    target: &str,
    headers: &HeaderMap,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the size line of a chunk of `len` bytes (`len` > 0: a zero-size
/// chunk ends the body).
pub(crate) fn encode_chunk_size(out: &mut Vec<u8>, len: usize) {
    use std::io::Write as _;
    debug_assert!(len > 0);
    let _ = write!(out, "{len:X}\r\n");
}

/// What follows a chunk's data.
pub(crate) const CHUNK_END: &[u8] = b"\r\n";
/// The end of a chunked body without trailers.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends the last chunk with a trailer section.
pub(crate) fn encode_last_chunk(out: &mut Vec<u8>, trailers: &HeaderMap) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body: a `HEAD` answer, `204`, `304`.
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A response head, how its body is delimited, and whether the connection
/// may carry another request afterwards.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) response: Response<()>,
    pub(crate) body: BodyFraming,
    pub(crate) keep_alive: bool,
}

/// Parses the response head at the start of `buf` and takes it off; skips
/// interim (1xx) responses. `Ok(None)`: the head is not complete yet.
/// `head_request`: the request was `HEAD`, whose answer has no body.
///
/// `spare` is a map to fill (emptied first, its memory reused), taken on
/// success. The connection passes the forwarded request's map: hyper's
/// server parses the client's next request into the map of the response it
/// wrote last, and a map that held a forwarded request has room for the
/// forwarding headers the gateway adds to the next one.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    head_request: bool,
    spare: &mut HeaderMap,
) -> Result<Option<ResponseHead>, Error> {
    loop {
        // Where each field's name and value lie in `buf`: recorded during
        // the parse, which borrows `buf`, and sliced out of the frozen head
        // afterwards, so that values share the buffer instead of being copied.
        let mut fields = [[0u32; 4]; MAX_HEADERS];
        let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut raw,
        );
        let len = match status {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => return Ok(None),
            Ok(_) => return Err(Error::Malformed("response head larger than 64 KiB")),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Malformed("more than 100 header fields"))
            }
            Err(_) => return Err(Error::Malformed("unparsable response head")),
        };
        let code = parsed.code.unwrap_or_default();
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        if (100..200).contains(&code) && code != 101 {
            // `100 Continue` and friends: the final answer follows.
            buf.advance(len);
            continue;
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let count = parsed.headers.len();
        for (field, h) in fields.iter_mut().zip(parsed.headers.iter()) {
            let name = offset(h.name.as_bytes());
            let value = offset(h.value);
            *field = [
                name,
                name + h.name.len() as u32,
                value,
                value + h.value.len() as u32,
            ];
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Malformed("invalid status code"))?;
        let head = buf.split_to(len).freeze();
        let mut headers = std::mem::take(spare);
        headers.clear();
        headers.reserve(count);
        for &[name_start, name_end, value_start, value_end] in &fields[..count] {
            let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
                .map_err(|_| Error::Malformed("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(
                head.slice(value_start as usize..value_end as usize),
            )
            .map_err(|_| Error::Malformed("invalid header value"))?;
            headers.append(name, value);
        }
        let (body, must_close) = response_framing(status, version, head_request, &mut headers)?;
        let keep_alive = !must_close && connection_reusable(version, &headers);
        let mut response = Response::new(());
        *response.status_mut() = status;
        // scopegate answers its client in its own HTTP version.
        *response.version_mut() = Version::HTTP_11;
        *response.headers_mut() = headers;
        return Ok(Some(ResponseHead {
            response,
            body,
            keep_alive,
        }));
    }
}

/// How the body is delimited, and whether the connection must close after it.
fn response_framing(
    status: StatusCode,
    version: Version,
    head_request: bool,
    headers: &mut HeaderMap,
) -> Result<(BodyFraming, bool), Error> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Upgrades go over connections of their own (`send_upgrade`).
        return Err(Error::Malformed(
            "101 to a request that asked for no upgrade",
        ));
    }
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((BodyFraming::Empty, false));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(Error::Malformed(
                "transfer-encoding in an HTTP/1.0 response",
            ));
        }
        // Both framings: transfer-encoding wins, the length goes (RFC 9112
        // 6.3 item 3), and the connection is not trusted with another request.
        let both = headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok(if last_coding_is_chunked(headers) {
            (BodyFraming::Chunked, both)
        } else {
            (BodyFraming::UntilClose, true)
        });
    }
    match content_length(headers) {
        Ok(Some(n)) => Ok((BodyFraming::Length(n), false)),
        Ok(None) => Ok((BodyFraming::UntilClose, true)),
        Err(()) => Err(Error::Malformed("invalid content-length")),
    }
}

/// Is `chunked` the last transfer coding?
fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The `content-length`, if any: every value (and every element of a list)
/// must be the same decimal number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for element in value.as_bytes().split(|&b| b == b',') {
            let element = element.trim_ascii();
            if element.is_empty() || !element.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = std::str::from_utf8(element)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// May the connection carry another request, as far as the head says?
fn connection_reusable(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &[u8]| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    };
    if version == Version::HTTP_10 {
        has(b"keep-alive") && !has(b"close")
    } else {
        !has(b"close")
    }
}

/// One step of decoding a response body.
#[derive(Debug)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// More bytes must be read first.
    NeedMore,
}

/// Decodes one response body from the connection's read buffer.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Done,
}

impl BodyDecoder {
    pub(crate) fn new(framing: BodyFraming) -> BodyDecoder {
        let state = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(n) => State::Length(n),
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    /// Has the whole body been decoded?
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still to come, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body off the front of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(n) | State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(n).map_or(buf.len(), |n| n.min(buf.len()));
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::ChunkDataEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => match parse_chunk_size(buf)? {
                    Some((used, size)) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    None => return Ok(Decoded::NeedMore),
                },
                State::ChunkDataEnd => match buf.get(..2) {
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.state = State::ChunkSize;
                    }
                    Some(_) => return Err(Error::Malformed("chunk data longer than its size")),
                    None if buf.first().is_some_and(|&b| b != b'\r') => {
                        return Err(Error::Malformed("chunk data longer than its size"))
                    }
                    None => return Ok(Decoded::NeedMore),
                },
                State::Trailers => {
                    let Some((used, trailers)) = parse_trailers(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    buf.advance(used);
                    self.state = State::Done;
                    if !trailers.is_empty() {
                        return Ok(Decoded::Trailers(trailers));
                    }
                }
            }
        }
    }

    /// The upstream closed the connection: the end of a body delimited by
    /// the close, or a body cut short.
    pub(crate) fn at_eof(&mut self) -> Result<(), Error> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(Error::Closed("in the middle of the response body")),
        }
    }
}

/// `chunk-size [ chunk-ext ] CRLF` (RFC 9112 7.1): the bytes it takes and
/// the size. Stricter than `httparse::parse_chunk_size`: at least one digit,
/// and no bare CR, LF or other control bytes in an extension.
fn parse_chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, Error> {
    let bad = || Error::Malformed("invalid chunk size line");
    let Some(eol) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CHUNK_LINE {
            Err(Error::Malformed("chunk size line longer than 1 KiB"))
        } else {
            Ok(None)
        };
    };
    let line = buf[..eol].strip_suffix(b"\r").ok_or_else(bad)?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(bad());
    }
    let rest = &line[digits..];
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";"))
        || rest.iter().any(|&b| b.is_ascii_control() && b != b'\t')
    {
        return Err(bad());
    }
    let size = std::str::from_utf8(&line[..digits])
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(bad)?;
    Ok(Some((eol + 1, size)))
}

/// The trailer section after the last chunk, up to its empty line.
fn parse_trailers(buf: &[u8]) -> Result<Option<(usize, HeaderMap)>, Error> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut raw) {
        Ok(httparse::Status::Complete((used, fields))) if used <= MAX_TRAILER_BYTES => {
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for field in fields {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| Error::Malformed("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(field.value)
                    .map_err(|_| Error::Malformed("invalid trailer value"))?;
                trailers.append(name, value);
            }
            Ok(Some((used, trailers)))
        }
        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILER_BYTES => Ok(None),
        Ok(_) => Err(Error::Malformed("trailer section larger than 16 KiB")),
        Err(_) => Err(Error::Malformed("invalid trailer section")),
    }
}

/// A response as [`read_response_for_fuzzing`] read it.
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub struct ReadResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Could the connection carry another request (as far as the bytes say)?
    pub reusable: bool,
}

/// Reads `wire` as the upstream's answer to one request (`HEAD` when
/// `head_request`), fed `step` bytes at a time as reads would deliver it,
/// through the same head parser and body decoder the connection uses.
/// `Ok(None)`: the bytes end before the head does. For the fuzz target
/// `upstream_response` (fuzz/checks.rs). Not an API: hidden, free to change.
#[doc(hidden)]
pub fn read_response_for_fuzzing(
    wire: &[u8],
    head_request: bool,
    step: usize,
) -> Result<Option<ReadResponse>, Error> {
    let fields = |map: &HeaderMap| {
        map.iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect::<Vec<_>>()
    };
    let step = step.max(1);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut feed = |buf: &mut BytesMut| {
        let end = (fed + step).min(wire.len());
        buf.extend_from_slice(&wire[fed..end]);
        let more = end > fed;
        fed = end;
        more
    };
    let mut spare = HeaderMap::new();
    let head = loop {
        if let Some(head) = parse_response_head(&mut buf, head_request, &mut spare)? {
            break head;
        }
        if !feed(&mut buf) {
            return Ok(None);
        }
    };
    let mut decoder = BodyDecoder::new(head.body);
    let (mut body, mut trailers, mut closed) = (Vec::new(), Vec::new(), false);
    loop {
        match decoder.decode(&mut buf)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::Trailers(t) => trailers = fields(&t),
            Decoded::End => break,
            Decoded::NeedMore => {
                if !feed(&mut buf) {
                    decoder.at_eof()?;
                    closed = true;
                }
            }
        }
    }
    Ok(Some(ReadResponse {
        status: head.response.status().as_u16(),
        headers: fields(head.response.headers()),
        body,
        trailers,
        reusable: head.keep_alive && !closed && buf.is_empty() && fed == wire.len(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], head_request: bool) -> Result<Option<ResponseHead>, Error> {
        parse_response_head(
            &mut BytesMut::from(bytes),
            head_request,
            &mut HeaderMap::new(),
        )
    }

    /// A body decoded whole: its data, its trailers, and what was left in
    /// the buffer after it.
    struct Whole(Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Feeds `wire` to a decoder `step` bytes at a time.
    fn decode_all(framing: BodyFraming, wire: &[u8], step: usize) -> Result<Whole, Error> {
        let mut decoder = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut data = Vec::new();
        let mut trailers = None;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => {
                    assert!(!d.is_empty(), "empty data frame");
                    data.extend_from_slice(&d);
                }
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok(Whole(data, trailers, buf.to_vec())),
                Decoded::NeedMore if fed == wire.len() => {
                    decoder.at_eof()?;
                }
                Decoded::NeedMore => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn request_heads_are_written_in_origin_form_with_lower_case_names() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("api.test"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_request_head(&mut out, &http::Method::GET, "/v1/x?q=1", &headers);
        assert_eq!(
            out,
            b"GET /v1/x?q=1 HTTP/1.1\r\nhost: api.test\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }

    #[test]
    fn request_framing_follows_the_body() {
        let mut headers = HeaderMap::new();
        let empty = http_body_util::Empty::<Bytes>::new();
        assert_eq!(request_framing(&mut headers, &empty), RequestFraming::None);
        assert!(headers.is_empty());

        let full = http_body_util::Full::new(Bytes::from_static(b"hello"));
        assert_eq!(request_framing(&mut headers, &full), RequestFraming::Length);
        assert_eq!(headers[header::CONTENT_LENGTH], "5");

        // A body of unknown length is chunked, and loses a stale length.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(
            request_framing(&mut headers, &Unsized),
            RequestFraming::Chunked
        );
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(headers[header::TRANSFER_ENCODING], "chunked");
    }

    /// A body that does not know its length.
    struct Unsized;

    impl http_body::Body for Unsized {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(None)
        }
    }

    #[test]
    fn chunks_and_trailers_are_framed() {
        let mut out = Vec::new();
        encode_chunk_size(&mut out, 300);
        assert_eq!(out, b"12C\r\n");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("abc"));
        out.clear();
        encode_last_chunk(&mut out, &trailers);
        assert_eq!(out, b"0\r\nx-sum: abc\r\n\r\n");
    }

    #[test]
    fn a_response_head_is_parsed_and_taken_off_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: yes\r\nX-Up: again\r\n\r\nhello"[..],
        );
        let mut spare = HeaderMap::with_capacity(32);
        spare.insert("x-old", HeaderValue::from_static("stale"));
        let head = parse_response_head(&mut buf, false, &mut spare)
            .unwrap()
            .unwrap();
        assert_eq!(head.response.status(), 200);
        assert!(!head.response.headers().contains_key("x-old"));
        assert!(
            head.response.headers().capacity() >= 32,
            "the map is reused"
        );
        assert_eq!(head.body, BodyFraming::Length(5));
        assert!(head.keep_alive);
        let ups: Vec<_> = head.response.headers().get_all("x-up").iter().collect();
        assert_eq!(ups, ["yes", "again"]);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn a_partial_head_waits_and_an_oversized_one_fails() {
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_HEAD_BYTES {
            big.extend_from_slice(
                b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        assert!(matches!(
            head(&big[..MAX_HEAD_BYTES + 1], false),
            Err(Error::Malformed(_))
        ));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(head(&many, false), Err(Error::Malformed(_))));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let head = parse_response_head(&mut buf, false, &mut HeaderMap::new())
            .unwrap()
            .unwrap();
        assert_eq!(head.response.status(), 201);
        assert!(!head.response.headers().contains_key("link"));
        assert_eq!(head.body, BodyFraming::Length(0));
        assert!(buf.is_empty());
    }

    #[test]
    fn body_framing_follows_rfc_9112() {
        let framing = |wire: &[u8], head_request| {
            head(wire, head_request).map(|h| {
                let h = h.unwrap();
                (h.body, h.keep_alive)
            })
        };
        use BodyFraming::*;
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true).unwrap(),
            (Empty, true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 204 No Content\r\n\r\n", false).unwrap(),
            (Empty, true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            )
            .unwrap(),
            (Empty, true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            )
            .unwrap(),
            (Chunked, true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            )
            .unwrap(),
            (Chunked, true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false).unwrap(),
            (UntilClose, false)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap(),
            (UntilClose, false)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", false).unwrap(),
            (Length(3), true)
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
                false
            )
            .unwrap(),
            (Length(3), false)
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", false).unwrap(),
            (Length(3), false)
        );
        assert_eq!(
            framing(
                b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
                false
            )
            .unwrap(),
            (Length(3), true)
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                head(bad, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn transfer_encoding_with_content_length_drops_the_length_and_the_connection() {
        let h = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.body, BodyFraming::Chunked);
        assert!(!h.keep_alive);
        assert!(!h.response.headers().contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn length_bodies_end_at_their_length_and_leave_the_rest() {
        for step in [1, 3, 100] {
            let Whole(data, _, rest) =
                decode_all(BodyFraming::Length(5), b"helloHTTP/1.1", step).unwrap();
            assert_eq!(data, b"hello");
            assert!(!rest.is_empty() || step < 5);
        }
        assert!(matches!(
            decode_all(BodyFraming::Length(5), b"hel", 2),
            Err(Error::Closed(_))
        ));
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 9\r\n\r\n";
        for step in 1..wire.len() {
            let Whole(data, trailers, rest) = decode_all(BodyFraming::Chunked, wire, step).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
            assert_eq!(trailers.unwrap()["x-sum"], "9");
            assert!(rest.is_empty());
        }
        let Whole(data, trailers, _) =
            decode_all(BodyFraming::Chunked, b"3\r\nabc\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(data, b"abc");
        assert!(trailers.is_none());
    }

    #[test]
    fn malformed_chunked_bodies_fail() {
        for bad in [
            &b"\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3 x\r\nabc\r\n0\r\n\r\n",
            b"3;a\rb\r\nabc\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"-3\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
            b"3\r\nabc\r\n",
        ] {
            assert!(
                decode_all(BodyFraming::Chunked, bad, 2).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"3;".to_vec();
        long.resize(MAX_CHUNK_LINE + 10, b'a');
        assert!(decode_all(BodyFraming::Chunked, &long, 4096).is_err());
    }

    #[test]
    fn a_close_delimited_body_ends_at_the_close() {
        let Whole(data, _, _) = decode_all(BodyFraming::UntilClose, b"all of it", 4).unwrap();
        assert_eq!(data, b"all of it");
        let Whole(data, _, _) = decode_all(BodyFraming::Empty, b"", 4).unwrap();
        assert!(data.is_empty());
    }
}
