//! A token's claims: kept as the JSON object text the issuer sent (for
//! identity headers, read on demand), and the claims scopegate checks, read
//! out of that text in one pass that builds no map.
//!
//! A JWT's payload used to become a `serde_json::Map`: an allocation per
//! member name and per string value, and as many frees when the cached
//! principal left the cache. Now a cold verify allocates the text once, plus
//! the subject and the scopes the principal keeps.

use std::borrow::Cow;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{AuthError, IssuerSettings};

fn invalid(why: &'static str) -> AuthError {
    AuthError::InvalidToken(why)
}

/// Every claim of a verified token, as the JSON object it came in.
#[derive(Clone, PartialEq, Eq)]
pub struct Claims(Box<str>);

impl Claims {
    /// `text` is a JSON object: the caller parsed it as one.
    pub(crate) fn from_object_text(text: impl Into<Box<str>>) -> Self {
        Claims(text.into())
    }

    /// The claims of `map`.
    pub fn from_map(map: &serde_json::Map<String, Value>) -> Self {
        // Writing a map of string keys cannot fail.
        Claims(
            serde_json::to_string(map)
                .unwrap_or_else(|_| "{}".into())
                .into(),
        )
    }

    /// The claims as JSON object text.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// Claim `name`, read from the text; of a name given twice, the last
    /// (as `serde_json` reads an object). The claims scopegate checks itself
    /// can never be given twice: such a token is refused.
    pub fn get(&self, name: &str) -> Option<Value> {
        struct Find<'n>(&'n str);
        impl<'de> Visitor<'de> for Find<'_> {
            type Value = Option<Value>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<ClaimValue<'de>>()? {
                    if key.text() == Some(self.0) {
                        found = Some(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(found)
            }
        }
        let mut de = serde_json::Deserializer::from_str(&self.0);
        de.deserialize_map(Find(name)).ok().flatten()
    }
}

impl Default for Claims {
    fn default() -> Self {
        Claims("{}".into())
    }
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A JSON value as far as the token checks look at it: a claim, a header
/// member, a member name. Strings are borrowed from the text when they
/// have no escapes; objects are skipped, never built.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClaimValue<'de> {
    Text(Cow<'de, str>),
    /// A number: exactly, when it is a non-negative integer that fits.
    Number {
        whole: Option<u64>,
        float: f64,
    },
    List(Vec<ClaimValue<'de>>),
    /// `null`, a boolean or an object.
    Other,
}

impl<'a> ClaimValue<'a> {
    /// The same view of a `serde_json` value (introspection answers).
    pub(crate) fn of(value: &'a Value) -> Self {
        match value {
            Value::String(s) => ClaimValue::Text(Cow::Borrowed(s)),
            Value::Number(n) => ClaimValue::Number {
                whole: n.as_u64(),
                float: n.as_f64().unwrap_or(f64::NAN),
            },
            Value::Array(items) => ClaimValue::List(items.iter().map(ClaimValue::of).collect()),
            _ => ClaimValue::Other,
        }
    }

    pub(crate) fn text(&self) -> Option<&str> {
        match self {
            ClaimValue::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for ClaimValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ClaimVisitor)
    }
}

struct ClaimVisitor;

impl<'de> Visitor<'de> for ClaimVisitor {
    type Value = ClaimValue<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<ClaimValue<'de>, E> {
        Ok(ClaimValue::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<ClaimValue<'de>, E> {
        Ok(ClaimValue::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<ClaimValue<'de>, E> {
        Ok(ClaimValue::Text(Cow::Owned(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<ClaimValue<'de>, E> {
        Ok(ClaimValue::Number {
            whole: Some(v),
            float: v as f64,
        })
    }
    fn visit_i64<E>(self, v: i64) -> Result<ClaimValue<'de>, E> {
        Ok(ClaimValue::Number {
            whole: u64::try_from(v).ok(),
            float: v as f64,
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<ClaimValue<'de>, E> {
        Ok(ClaimValue::Number {
            whole: None,
            float: v,
        })
    }
    fn visit_bool<E>(self, _: bool) -> Result<ClaimValue<'de>, E> {
        Ok(ClaimValue::Other)
    }
    fn visit_unit<E>(self) -> Result<ClaimValue<'de>, E> {
        Ok(ClaimValue::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ClaimValue<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(ClaimValue::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ClaimValue<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(ClaimValue::Other)
    }
}

/// The claims the checks read; every other member is skipped unread (and
/// unallocated).
#[derive(Debug, Default)]
pub(crate) struct Registered<'de> {
    iss: Option<ClaimValue<'de>>,
    sub: Option<ClaimValue<'de>>,
    aud: Option<ClaimValue<'de>>,
    exp: Option<ClaimValue<'de>>,
    nbf: Option<ClaimValue<'de>>,
    iat: Option<ClaimValue<'de>>,
    scope: Option<ClaimValue<'de>>,
    scp: Option<ClaimValue<'de>>,
    /// One of the above was given twice (RFC 7519 section 4: refuse it,
    /// or read the last; refusing leaves no other parser a different view).
    duplicate: bool,
}

impl<'de> Deserialize<'de> for Registered<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RegisteredVisitor;
        impl<'de> Visitor<'de> for RegisteredVisitor {
            type Value = Registered<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Registered<'de>, A::Error> {
                let mut claims = Registered::default();
                while let Some(name) = map.next_key::<ClaimValue<'de>>()? {
                    let slot = match name.text().unwrap_or_default() {
                        "iss" => &mut claims.iss,
                        "sub" => &mut claims.sub,
                        "aud" => &mut claims.aud,
                        "exp" => &mut claims.exp,
                        "nbf" => &mut claims.nbf,
                        "iat" => &mut claims.iat,
                        "scope" => &mut claims.scope,
                        "scp" => &mut claims.scp,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let value = map.next_value::<ClaimValue<'de>>()?;
                    if slot.replace(value).is_some() {
                        claims.duplicate = true;
                    }
                }
                Ok(claims)
            }
        }
        d.deserialize_map(RegisteredVisitor)
    }
}

/// What the claims checks hand to the principal.
pub(crate) struct Checked {
    pub(crate) issuer: Box<str>,
    pub(crate) subject: Option<Box<str>>,
    pub(crate) scopes: Box<[Box<str>]>,
    /// `exp`, Unix seconds.
    pub(crate) expires_at: u64,
}

impl<'de> Registered<'de> {
    /// The registered claims of a JWT payload (JSON object text).
    pub(crate) fn read(payload: &'de str) -> Result<Self, AuthError> {
        let claims: Registered<'de> =
            serde_json::from_str(payload).map_err(|_| invalid("malformed token"))?;
        if claims.duplicate {
            return Err(invalid("duplicate claim"));
        }
        Ok(claims)
    }

    /// `iss`, which picks the issuer.
    pub(crate) fn issuer(&self) -> Result<&str, AuthError> {
        self.iss
            .as_ref()
            .and_then(ClaimValue::text)
            .ok_or(invalid("unknown issuer"))
    }

    /// Checks the claims of a token whose signature verified; `now` in Unix
    /// seconds.
    pub(crate) fn check(
        &self,
        issuer: &IssuerSettings,
        leeway: u64,
        now: u64,
    ) -> Result<Checked, AuthError> {
        let exp =
            numeric_date(self.exp.as_ref(), "malformed exp")?.ok_or(invalid("missing exp"))?;
        if exp.saturating_add(leeway) <= now {
            return Err(invalid("token expired"));
        }
        if let Some(nbf) = numeric_date(self.nbf.as_ref(), "malformed nbf")? {
            if nbf > now.saturating_add(leeway) {
                return Err(invalid("token not yet valid"));
            }
        }
        if let Some(iat) = numeric_date(self.iat.as_ref(), "malformed iat")? {
            if iat > now.saturating_add(leeway) {
                return Err(invalid("token issued in the future"));
            }
        }
        let iss = self.issuer()?;
        if iss != issuer.issuer {
            return Err(invalid("unknown issuer"));
        }
        let aud_ok = match &self.aud {
            Some(ClaimValue::Text(aud)) => issuer.audiences.iter().any(|a| a == aud),
            Some(ClaimValue::List(auds)) => auds
                .iter()
                .filter_map(ClaimValue::text)
                .any(|aud| issuer.audiences.iter().any(|a| a == aud)),
            _ => false,
        };
        if !aud_ok {
            return Err(invalid("wrong audience"));
        }
        let subject = match &self.sub {
            None => None,
            Some(ClaimValue::Text(s)) => Some(Box::from(&**s)),
            Some(_) => return Err(invalid("malformed sub")),
        };
        Ok(Checked {
            issuer: iss.into(),
            subject,
            scopes: scopes_from(self.scope.as_ref(), self.scp.as_ref())?,
            expires_at: exp,
        })
    }
}

/// A JSON NumericDate: a non-negative number (fractions allowed, floored).
fn numeric_date(
    value: Option<&ClaimValue<'_>>,
    why: &'static str,
) -> Result<Option<u64>, AuthError> {
    match value {
        None => Ok(None),
        Some(ClaimValue::Number { whole: Some(v), .. }) => Ok(Some(*v)),
        Some(ClaimValue::Number { whole: None, float }) if float.is_finite() && *float >= 0.0 => {
            Ok(Some(float.floor() as u64))
        }
        Some(_) => Err(invalid(why)),
    }
}

/// Scopes from `scope` (space-delimited string) or, if absent, `scp`
/// (array of strings, or a string).
pub(crate) fn scopes_from(
    scope: Option<&ClaimValue<'_>>,
    scp: Option<&ClaimValue<'_>>,
) -> Result<Box<[Box<str>]>, AuthError> {
    let malformed = || invalid("malformed scope");
    match (scope, scp) {
        (Some(ClaimValue::Text(s)), _) => Ok(s.split_ascii_whitespace().map(Box::from).collect()),
        (Some(_), _) => Err(malformed()),
        (None, Some(ClaimValue::Text(s))) => {
            Ok(s.split_ascii_whitespace().map(Box::from).collect())
        }
        (None, Some(ClaimValue::List(items))) => items
            .iter()
            .map(|item| item.text().map(Box::from).ok_or_else(malformed))
            .collect(),
        (None, Some(_)) => Err(malformed()),
        (None, None) => Ok(Box::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scopes(claims: &Value) -> Option<Vec<String>> {
        let text = claims.to_string();
        let registered = Registered::read(&text).ok()?;
        let scopes = scopes_from(registered.scope.as_ref(), registered.scp.as_ref()).ok()?;
        Some(scopes.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn scope_sources() {
        let cases = [
            (json!({"scope": "a b  c"}), Some(vec!["a", "b", "c"])),
            (json!({"scp": ["a", "b"]}), Some(vec!["a", "b"])),
            (json!({"scp": "a b"}), Some(vec!["a", "b"])),
            (json!({"scope": "a", "scp": ["b"]}), Some(vec!["a"])),
            (json!({}), Some(vec![])),
            (json!({"scope": ["a"]}), None),
            (json!({"scope": null}), None),
            (json!({"scp": ["a", 1]}), None),
            (json!({"scp": {"a": 1}}), None),
            (json!({"scp": 3}), None),
        ];
        for (claims, want) in cases {
            let want = want.map(|w| w.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(scopes(&claims), want, "{claims}");
        }
    }

    #[test]
    fn the_same_view_of_a_serde_json_value() {
        let value = json!({
            "s": "text", "n": 12, "neg": -3, "f": 1.5, "l": ["a", 2, "b", null],
            "o": {"x": 1}, "b": true, "z": null,
        });
        let text = value.to_string();
        let Value::Object(map) = &value else { panic!() };
        let read: Vec<(String, ClaimValue<'_>)> = map
            .keys()
            .map(|k| {
                let mut de = serde_json::Deserializer::from_str(&text);
                struct Pick<'n>(&'n str);
                impl<'de> Visitor<'de> for Pick<'_> {
                    type Value = Option<ClaimValue<'de>>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("object")
                    }
                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        mut m: A,
                    ) -> Result<Self::Value, A::Error> {
                        let mut found = None;
                        while let Some(k) = m.next_key::<ClaimValue<'de>>()? {
                            if k.text() == Some(self.0) {
                                found = Some(m.next_value()?);
                            } else {
                                m.next_value::<IgnoredAny>()?;
                            }
                        }
                        Ok(found)
                    }
                }
                (k.clone(), de.deserialize_map(Pick(k)).unwrap().unwrap())
            })
            .collect();
        for (k, from_text) in read {
            assert_eq!(from_text, ClaimValue::of(&map[&k]), "{k}");
        }
    }

    #[test]
    fn claims_are_read_from_the_text() {
        let claims = Claims::from_map(
            json!({"sub": "u1", "groups": ["a", "b"], "n": 3, "esc": "a\"b"})
                .as_object()
                .unwrap(),
        );
        assert_eq!(claims.get("sub"), Some(json!("u1")));
        assert_eq!(claims.get("groups"), Some(json!(["a", "b"])));
        assert_eq!(claims.get("n"), Some(json!(3)));
        assert_eq!(claims.get("esc"), Some(json!("a\"b")));
        assert_eq!(claims.get("missing"), None);
        assert_eq!(Claims::default().get("sub"), None);
        // Of a name given twice, the last, as serde_json reads it.
        let twice = Claims::from_object_text(r#"{"email":"a@x","email":"b@x"}"#);
        assert_eq!(twice.get("email"), Some(json!("b@x")));
        // A name written with an escape is the same name.
        let escaped = Claims::from_object_text(r#"{"gr\u006fups":["a"]}"#);
        assert_eq!(escaped.get("groups"), Some(json!(["a"])));
    }

    #[test]
    fn registered_claims_come_once() {
        for name in ["iss", "sub", "aud", "exp", "nbf", "iat", "scope", "scp"] {
            let text = format!(r#"{{"{name}":1,"other":2,"{name}":3}}"#);
            assert_eq!(
                Registered::read(&text).err(),
                Some(invalid("duplicate claim")),
                "{text}"
            );
            // Spelled with an escape, still the same claim.
            let escaped = format!(
                r#"{{"{name}":1,"\u00{:02x}{}":3}}"#,
                name.as_bytes()[0],
                &name[1..]
            );
            assert_eq!(
                Registered::read(&escaped).err(),
                Some(invalid("duplicate claim")),
                "{escaped}"
            );
        }
        // Other names may repeat (identity headers read the last).
        assert!(Registered::read(r#"{"email":"a","email":"b"}"#).is_ok());
    }

    #[test]
    fn the_payload_must_be_one_json_object() {
        for text in ["[]", "\"x\"", "1", "null", "{} {}", "{", "", "{\"a\":}"] {
            assert_eq!(
                Registered::read(text).err(),
                Some(invalid("malformed token")),
                "{text:?}"
            );
        }
    }

    #[test]
    fn numeric_dates() {
        let read = |v: Value| {
            let text = json!({ "exp": v }).to_string();
            let r = Registered::read(&text).unwrap();
            numeric_date(r.exp.as_ref(), "malformed exp")
        };
        assert_eq!(read(json!(10)), Ok(Some(10)));
        assert_eq!(read(json!(10.9)), Ok(Some(10)));
        assert_eq!(read(json!(0)), Ok(Some(0)));
        assert_eq!(read(json!(-1)), Err(invalid("malformed exp")));
        assert_eq!(read(json!(-0.5)), Err(invalid("malformed exp")));
        assert_eq!(read(json!("10")), Err(invalid("malformed exp")));
        assert_eq!(read(json!(null)), Err(invalid("malformed exp")));
        assert_eq!(read(json!([10])), Err(invalid("malformed exp")));
        // Beyond u64: a float, floored and saturated.
        let text = r#"{"exp":1e30}"#;
        let r = Registered::read(text).unwrap();
        assert_eq!(numeric_date(r.exp.as_ref(), "x"), Ok(Some(u64::MAX)));
    }
}
