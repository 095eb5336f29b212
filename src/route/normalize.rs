//! Request-path normalization: the one spelling of a path that the gateway matches and forwards.
//!
//! [`normalize`] runs in two passes over the path as received:
//!
//! 1. **Validate** (no allocation): reject everything the contract lists, and
//!    note whether anything would change. Percent-escapes are decoded on the
//!    fly and fed, together with the raw bytes around them, through one
//!    streaming UTF-8 check, so an escape run that is not valid UTF-8
//!    (`%C0%AE`, `%FF`, `%E2%82`) is caught wherever it stands.
//! 2. **Rewrite** (only when pass 1 found something to change): decode
//!    escaped unreserved characters, upper-case the hex of every other
//!    escape, merge runs of slashes and remove dot segments (RFC 3986
//!    5.2.4), refusing to climb above the root.
//!
//! A path that is already normal comes back as `Cow::Borrowed`, so the common
//! case does not allocate. The output is a fixed point:
//! `normalize(normalize(x)) == normalize(x)`.

use std::borrow::Cow;

/// Why a request path was rejected (-> 400 `invalid_request`).
///
/// `Display` is a short human description, fit for `error_description`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// Empty, or not starting with `/`.
    #[error("path does not start with /")]
    NotAbsolute,
    /// `%2F` / `%2f`.
    #[error("encoded slash in path")]
    EncodedSlash,
    /// `%5C` / `%5c`.
    #[error("encoded backslash in path")]
    EncodedBackslash,
    /// A raw `\`.
    #[error("backslash in path")]
    Backslash,
    /// A raw byte 0x00-0x1F or 0x7F.
    #[error("control character in path")]
    ControlCharacter,
    /// `%00`-`%1F` or `%7F`.
    #[error("encoded control character in path")]
    EncodedControlCharacter,
    /// A `;` (matrix parameters).
    #[error("semicolon in path")]
    Semicolon,
    /// A `#`.
    #[error("'#' in path")]
    Fragment,
    /// `%` not followed by two hex digits (`%zz`, `%u002e`, `%4`, a lone `%`).
    #[error("malformed percent-escape in path")]
    MalformedEscape,
    /// Escapes that decode to bytes that are not valid UTF-8 (`%C0%AE`, `%FF`).
    #[error("percent-escapes in path are not valid UTF-8")]
    InvalidUtf8,
    /// More `..` segments than there are segments to remove (`/..`, `/a/../..`).
    #[error("path climbs above the root")]
    AboveRoot,
}

/// Normalizes a request path (without the query string) per the contract's
/// "Path normalization" section. See the module documentation.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, NormalizeError> {
    if validate(path)? {
        rewrite(path).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(path))
    }
}

/// Pass 1: rejects what the contract forbids; `Ok(true)` if the path is not
/// yet in normal form.
fn validate(path: &str) -> Result<bool, NormalizeError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(NormalizeError::NotAbsolute);
    }
    let mut utf8 = Utf8Check::default();
    let mut changes = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'%' => {
                let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return Err(NormalizeError::MalformedEscape);
                };
                let (Some(hv), Some(lv)) = (hex_value(h), hex_value(l)) else {
                    return Err(NormalizeError::MalformedEscape);
                };
                let decoded = hv << 4 | lv;
                match decoded {
                    b'/' => return Err(NormalizeError::EncodedSlash),
                    b'\\' => return Err(NormalizeError::EncodedBackslash),
                    0x00..=0x1F | 0x7F => return Err(NormalizeError::EncodedControlCharacter),
                    _ => {}
                }
                if is_unreserved(decoded) || h.is_ascii_lowercase() || l.is_ascii_lowercase() {
                    changes = true;
                }
                utf8.push(decoded)?;
                i += 3;
                continue;
            }
            b'\\' => return Err(NormalizeError::Backslash),
            0x00..=0x1F | 0x7F => return Err(NormalizeError::ControlCharacter),
            b';' => return Err(NormalizeError::Semicolon),
            b'#' => return Err(NormalizeError::Fragment),
            b'/' if starts_empty_or_dot_segment(&bytes[i + 1..]) => changes = true,
            _ => {}
        }
        utf8.push(c)?;
        i += 1;
    }
    utf8.finish()?;
    Ok(changes)
}

/// Whether the segment after a `/` changes in normal form: empty (another
/// `/` follows), `.` or `..`, spelled literally (an escaped dot already
/// counts as a change). A trailing slash does not.
fn starts_empty_or_dot_segment(after_slash: &[u8]) -> bool {
    match after_slash.split(|&b| b == b'/').next().unwrap_or_default() {
        b"." | b".." => true,
        b"" => after_slash.first() == Some(&b'/'),
        _ => false,
    }
}

/// Pass 2: builds the normal form of a path that passed [`validate`].
fn rewrite(path: &str) -> Result<String, NormalizeError> {
    let mut out = String::with_capacity(path.len());
    // Whether the output ends with a slash: the input ended with one, or its
    // last segment was a dot segment (RFC 3986: `/a/b/.` -> `/a/b/`).
    let mut trailing_slash = false;
    for chunk in path[1..].split('/') {
        if chunk.is_empty() {
            trailing_slash = true;
            continue;
        }
        let start = out.len();
        out.push('/');
        push_decoded(&mut out, chunk);
        match &out[start + 1..] {
            "." => {
                out.truncate(start);
                trailing_slash = true;
            }
            ".." => {
                out.truncate(start);
                let parent = out.rfind('/').ok_or(NormalizeError::AboveRoot)?;
                out.truncate(parent);
                trailing_slash = true;
            }
            _ => trailing_slash = false,
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Appends `segment` with unreserved escapes decoded and other escapes'
/// hex upper-cased. `segment` has passed [`validate`].
fn push_decoded(out: &mut String, segment: &str) {
    let mut rest = segment;
    while let Some(p) = rest.find('%') {
        out.push_str(&rest[..p]);
        let esc = &rest.as_bytes()[p + 1..p + 3];
        let (h, l) = (esc[0], esc[1]);
        let decoded = hex_value(h).unwrap_or(0) << 4 | hex_value(l).unwrap_or(0);
        if is_unreserved(decoded) {
            out.push(char::from(decoded));
        } else {
            out.push('%');
            out.push(char::from(h.to_ascii_uppercase()));
            out.push(char::from(l.to_ascii_uppercase()));
        }
        rest = &rest[p + 3..];
    }
    out.push_str(rest);
}

/// RFC 3986 `unreserved`: ALPHA / DIGIT / `-` / `.` / `_` / `~`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

pub(super) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A streaming UTF-8 validator (Unicode 15, table 3-7: no overlongs, no
/// surrogates, nothing above U+10FFFF), fed one byte at a time so the decoded
/// path never has to be materialized.
#[derive(Debug)]
struct Utf8Check {
    /// Continuation bytes still expected.
    pending: u8,
    /// Allowed range of the next continuation byte.
    lo: u8,
    hi: u8,
}

impl Default for Utf8Check {
    fn default() -> Self {
        Utf8Check {
            pending: 0,
            lo: 0x80,
            hi: 0xBF,
        }
    }
}

impl Utf8Check {
    fn push(&mut self, b: u8) -> Result<(), NormalizeError> {
        if self.pending > 0 {
            if !(self.lo..=self.hi).contains(&b) {
                return Err(NormalizeError::InvalidUtf8);
            }
            self.pending -= 1;
            self.lo = 0x80;
            self.hi = 0xBF;
            return Ok(());
        }
        let (pending, lo, hi) = match b {
            0x00..=0x7F => return Ok(()),
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            _ => return Err(NormalizeError::InvalidUtf8),
        };
        *self = Utf8Check { pending, lo, hi };
        Ok(())
    }

    fn finish(&self) -> Result<(), NormalizeError> {
        if self.pending == 0 {
            Ok(())
        } else {
            Err(NormalizeError::InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NormalizeError::*;

    /// Checks `normalize(input)`, and for every `Ok`: the result is a fixed
    /// point, and it is borrowed exactly when nothing changed.
    fn check(input: &str, expected: Result<&str, NormalizeError>) {
        let got = normalize(input);
        assert_eq!(
            got.as_deref().map_err(|&e| e),
            expected,
            "normalize({input:?})"
        );
        if let Ok(out) = got {
            assert_eq!(
                matches!(out, Cow::Borrowed(_)),
                *out == *input,
                "normalize({input:?}) = {out:?}: borrowed iff unchanged"
            );
            let again = normalize(&out);
            assert_eq!(again.as_deref(), Ok(&*out), "idempotence for {input:?}");
            assert!(
                matches!(again, Ok(Cow::Borrowed(_))),
                "normalize({out:?}) must not allocate"
            );
        }
    }

    fn check_all(cases: &[(&str, Result<&str, NormalizeError>)]) {
        for &(input, expected) in cases {
            check(input, expected);
        }
    }

    #[test]
    fn already_normal_paths_pass_unchanged() {
        check_all(&[
            ("/", Ok("/")),
            ("/api/messages", Ok("/api/messages")),
            ("/api/messages/", Ok("/api/messages/")),
            ("/a/b/c/d", Ok("/a/b/c/d")),
            ("/a/.../b", Ok("/a/.../b")),
            ("/a/.b/b.", Ok("/a/.b/b.")),
            ("/caf\u{e9}/\u{1F600}", Ok("/caf\u{e9}/\u{1F600}")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%3Ab", Ok("/a%3Ab")),
            ("/%C3%A9", Ok("/%C3%A9")),
            ("/%E2%82%AC/%F0%9F%98%80", Ok("/%E2%82%AC/%F0%9F%98%80")),
            ("/a%252e%252e/", Ok("/a%252e%252e/")),
            ("/a/%252e%252e/", Ok("/a/%252e%252e/")),
            ("/a:b@c!$&'()*+,=", Ok("/a:b@c!$&'()*+,=")),
            ("/{x}/**", Ok("/{x}/**")),
        ]);
    }

    #[test]
    fn rejects_not_absolute() {
        check_all(&[
            ("", Err(NotAbsolute)),
            ("api", Err(NotAbsolute)),
            ("*", Err(NotAbsolute)),
            ("%2Fapi", Err(NotAbsolute)),
            ("http://host/api", Err(NotAbsolute)),
        ]);
    }

    #[test]
    fn rejects_encoded_slash_and_backslash() {
        check_all(&[
            ("/admin%2Fx", Err(EncodedSlash)),
            ("/admin%2fx", Err(EncodedSlash)),
            ("/public/..%2Fadmin", Err(EncodedSlash)),
            ("/public/..%2fadmin", Err(EncodedSlash)),
            ("/%2F", Err(EncodedSlash)),
            ("/a%5Cb", Err(EncodedBackslash)),
            ("/a%5cb", Err(EncodedBackslash)),
            ("/a\\b", Err(Backslash)),
            ("/public\\..\\admin", Err(Backslash)),
        ]);
    }

    #[test]
    fn rejects_control_characters_raw_and_encoded() {
        check_all(&[
            ("/a\0b", Err(ControlCharacter)),
            ("/a\nb", Err(ControlCharacter)),
            ("/a\rb", Err(ControlCharacter)),
            ("/a\tb", Err(ControlCharacter)),
            ("/a\u{1f}", Err(ControlCharacter)),
            ("/a\u{7f}", Err(ControlCharacter)),
            ("/a%00", Err(EncodedControlCharacter)),
            ("/a%0A", Err(EncodedControlCharacter)),
            ("/a%0d", Err(EncodedControlCharacter)),
            ("/a%1F", Err(EncodedControlCharacter)),
            ("/a%1f", Err(EncodedControlCharacter)),
            ("/a%7F", Err(EncodedControlCharacter)),
            ("/a%7f", Err(EncodedControlCharacter)),
            // Just outside the ranges: fine.
            ("/a%20", Ok("/a%20")),
            ("/a%7E", Ok("/a~")),
        ]);
    }

    #[test]
    fn rejects_semicolon_and_hash() {
        check_all(&[
            ("/a;b", Err(Semicolon)),
            ("/admin;jsessionid=1", Err(Semicolon)),
            ("/admin/..;/x", Err(Semicolon)),
            ("/a#b", Err(Fragment)),
            ("/#", Err(Fragment)),
            // Their escapes are other escapes: kept as they are.
            ("/a%3Bb", Ok("/a%3Bb")),
            ("/a%23b", Ok("/a%23b")),
        ]);
    }

    #[test]
    fn rejects_malformed_escapes() {
        check_all(&[
            ("/%", Err(MalformedEscape)),
            ("/a%", Err(MalformedEscape)),
            ("/%4", Err(MalformedEscape)),
            ("/%4/", Err(MalformedEscape)),
            ("/%zz", Err(MalformedEscape)),
            ("/%g0", Err(MalformedEscape)),
            ("/%0g", Err(MalformedEscape)),
            ("/%u002e", Err(MalformedEscape)),
            ("/%%41", Err(MalformedEscape)),
            ("/%\u{e9}", Err(MalformedEscape)),
        ]);
    }

    #[test]
    fn rejects_escapes_that_are_not_utf8() {
        check_all(&[
            ("/%C0%AE", Err(InvalidUtf8)),
            ("/%c0%ae%c0%ae/admin", Err(InvalidUtf8)),
            ("/%E0%80%AE", Err(InvalidUtf8)),
            ("/%FF", Err(InvalidUtf8)),
            ("/%80", Err(InvalidUtf8)),
            ("/%C3", Err(InvalidUtf8)),
            ("/%C3/", Err(InvalidUtf8)),
            ("/%E2%82", Err(InvalidUtf8)),
            ("/%E2%82x", Err(InvalidUtf8)),
            ("/%ED%A0%80", Err(InvalidUtf8)),
            ("/%F4%90%80%80", Err(InvalidUtf8)),
            ("/%F5%80%80%80", Err(InvalidUtf8)),
            // An escaped lead byte followed by a raw character.
            ("/%C3\u{e9}", Err(InvalidUtf8)),
            // A raw character followed by a stray escaped continuation byte.
            ("/\u{e9}%A9", Err(InvalidUtf8)),
        ]);
    }

    #[test]
    fn decodes_unreserved_and_uppercases_other_escapes() {
        check_all(&[
            ("/%41", Ok("/A")),
            ("/%61%62%63", Ok("/abc")),
            ("/%30%39", Ok("/09")),
            ("/%2D%2E%5F%7E", Ok("/-._~")),
            ("/%2d%2e%5f%7e", Ok("/-._~")),
            ("/a%3ab", Ok("/a%3Ab")),
            ("/a%c3%a9", Ok("/a%C3%A9")),
            ("/%25", Ok("/%25")),
            ("/%252e", Ok("/%252e")),
            ("/%2541", Ok("/%2541")),
            ("/%3f%3F", Ok("/%3F%3F")),
            ("/%61dmin", Ok("/admin")),
        ]);
    }

    #[test]
    fn merges_slashes() {
        check_all(&[
            ("//", Ok("/")),
            ("///", Ok("/")),
            ("//admin", Ok("/admin")),
            ("//api///x", Ok("/api/x")),
            ("/a//", Ok("/a/")),
            ("/a//b//", Ok("/a/b/")),
        ]);
    }

    #[test]
    fn removes_dot_segments() {
        check_all(&[
            ("/a/./b/../c", Ok("/a/c")),
            ("/./admin", Ok("/admin")),
            ("/.", Ok("/")),
            ("/./", Ok("/")),
            ("/a/b/.", Ok("/a/b/")),
            ("/a/b/./", Ok("/a/b/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/..", Ok("/")),
            ("/a/../", Ok("/")),
            ("/a/b/../../c/", Ok("/c/")),
            ("/public/../admin", Ok("/admin")),
            ("/public/%2e%2e/admin", Ok("/admin")),
            ("/public/%2E%2E/admin", Ok("/admin")),
            ("/public/.%2e/admin", Ok("/admin")),
            ("/public/%2e/admin", Ok("/public/admin")),
            ("/a//..//b", Ok("/b")),
            ("/a/..b/c", Ok("/a/..b/c")),
        ]);
    }

    #[test]
    fn rejects_climbing_above_the_root() {
        check_all(&[
            ("/..", Err(AboveRoot)),
            ("/../", Err(AboveRoot)),
            ("/../admin", Err(AboveRoot)),
            ("/a/../..", Err(AboveRoot)),
            ("/a/../../b", Err(AboveRoot)),
            ("/%2e%2e/", Err(AboveRoot)),
            ("/%2E%2E", Err(AboveRoot)),
            ("/./..", Err(AboveRoot)),
            ("//..", Err(AboveRoot)),
        ]);
    }

    /// Every path of up to six characters over an alphabet that makes dot
    /// segments, escapes and slash runs: whatever is accepted comes out in
    /// normal form (checked by `check`: a borrowed fixed point) and keeps no
    /// `//`, no dot segment and no unreserved escape.
    #[test]
    fn accepted_paths_come_out_in_normal_form() {
        const ALPHABET: &[u8] = b"/.%2eEa";
        let mut accepted = 0;
        let mut input = Vec::new();
        for n in 0..=6u32 {
            for mut code in 0..ALPHABET.len().pow(n) {
                input.clear();
                input.push(b'/');
                for _ in 0..n {
                    input.push(ALPHABET[code % ALPHABET.len()]);
                    code /= ALPHABET.len();
                }
                let input = std::str::from_utf8(&input).expect("ASCII");
                let Ok(out) = normalize(input) else { continue };
                accepted += 1;
                check(input, Ok(&out));
                assert!(out.starts_with('/'), "{input:?} -> {out:?}");
                assert!(!out.contains("//"), "{input:?} -> {out:?}");
                assert!(
                    !out.split('/').any(|s| s == "." || s == ".."),
                    "{input:?} -> {out:?}"
                );
                assert!(
                    !out.contains("%2e") && !out.contains("%2E"),
                    "{input:?} -> {out:?}"
                );
            }
        }
        assert!(accepted > 10_000, "only {accepted} paths accepted");
    }

    #[test]
    fn error_messages_are_short_descriptions() {
        assert_eq!(EncodedSlash.to_string(), "encoded slash in path");
        assert_eq!(AboveRoot.to_string(), "path climbs above the root");
    }
}
