//! The raw, unvalidated shape of routes.yaml: serde structs that mirror the
//! contract's keys one for one (`deny_unknown_fields` everywhere, so a typo is
//! an error), and the JSON Schema generated from them.
//!
//! Nothing here checks a value beyond its YAML type; `validate` does that.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// scopegate's routes.yaml.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "scopegate routes.yaml")]
pub(crate) struct RawConfig {
    /// Proxy listener, `IP:PORT`. Default `0.0.0.0:8080`.
    pub(crate) listen: Option<String>,
    /// Admin listener (/healthz /readyz /metrics), `IP:PORT`. Default `127.0.0.1:9901`.
    pub(crate) admin_listen: Option<String>,
    /// Terminate TLS on the proxy listener.
    pub(crate) tls: Option<RawTls>,
    /// Where routes forward unless they name their own: `http(s)://host[:port]`, no path.
    pub(crate) upstream: Option<String>,
    /// Trusted JWT issuers.
    // Read piecewise (item by item, see `compile::Raw`); declared here for
    // the schema and so that the whole document has one type.
    #[allow(dead_code)]
    #[serde(default)]
    pub(crate) issuers: Vec<RawIssuer>,
    /// Extra PEM roots for https:// issuers and introspection.
    pub(crate) ca_file: Option<String>,
    /// RFC 7662 introspection, to accept opaque tokens.
    pub(crate) introspection: Option<RawIntrospection>,
    pub(crate) timeouts: Option<RawTimeouts>,
    pub(crate) limits: Option<RawLimits>,
    /// Clock skew allowed on exp/nbf/iat. Default `30s`.
    pub(crate) leeway: Option<RawDuration>,
    pub(crate) forward: Option<RawForward>,
    /// Forward-auth mode (nginx auth_request, Traefik, Caddy, Envoy ext_authz).
    pub(crate) forward_auth: Option<RawForwardAuth>,
    /// How long in-flight requests may finish after SIGTERM. Default `30s`.
    pub(crate) shutdown_grace: Option<RawDuration>,
    /// The route table. Order in the file does not matter for matching.
    #[allow(dead_code)] // read piecewise, like `issuers`
    #[serde(default)]
    pub(crate) routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Tls")]
pub(crate) struct RawTls {
    /// PEM certificate chain.
    pub(crate) cert: String,
    /// PEM private key.
    pub(crate) key: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Issuer")]
pub(crate) struct RawIssuer {
    /// Must equal the token's `iss` exactly.
    pub(crate) issuer: String,
    /// The token's `aud` must contain at least one of these.
    pub(crate) audiences: Vec<RawText>,
    /// Optional; else found by OIDC discovery.
    pub(crate) jwks_uri: Option<String>,
    /// Allow-list. Default `[RS256, ES256]`.
    pub(crate) algorithms: Option<Vec<String>>,
    /// Demand header `typ: at+jwt` (RFC 9068). Default false.
    #[serde(default)]
    pub(crate) require_at_jwt: bool,
    /// Background refresh of the key set. Default `5m`.
    pub(crate) jwks_refresh: Option<RawDuration>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "AuthMethod")]
pub(crate) enum RawAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Introspection")]
pub(crate) struct RawIntrospection {
    pub(crate) endpoint: String,
    pub(crate) client_id: RawText,
    pub(crate) client_secret: RawText,
    /// Default `client_secret_basic`.
    pub(crate) auth_method: Option<RawAuthMethod>,
    /// An answer's `iss`, when present, must equal it.
    pub(crate) issuer: Option<String>,
    /// An answer's `aud`, when present, must contain one of these.
    pub(crate) audiences: Option<Vec<RawText>>,
    /// Upper bound on caching an answer. Default `60s`.
    pub(crate) cache_ttl: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Timeouts")]
pub(crate) struct RawTimeouts {
    /// One discovery / JWKS / introspection request. Default `5s`.
    pub(crate) idp: Option<RawDuration>,
    /// Default `5s`.
    pub(crate) upstream_connect: Option<RawDuration>,
    /// Until the upstream's response headers arrive. Default `30s`.
    pub(crate) upstream_response: Option<RawDuration>,
    /// Until the client's request headers are complete. Default `10s`.
    pub(crate) client_header: Option<RawDuration>,
    /// A keep-alive connection with no request in flight is closed after this. Default `60s`.
    pub(crate) idle: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Limits")]
pub(crate) struct RawLimits {
    /// Larger request headers get 431. Default 65536, at least 8192.
    pub(crate) max_header_bytes: Option<u64>,
    /// Connections served at once per listener. Default 10000.
    pub(crate) max_connections: Option<u64>,
    /// Requests waiting for an upstream's response head at once, divided
    /// among the worker threads; more wait their turn. Default 256 per
    /// worker thread.
    pub(crate) max_upstream_requests: Option<u64>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Forward")]
pub(crate) struct RawForward {
    /// Drop the Authorization header before forwarding. Default false.
    #[serde(default)]
    pub(crate) strip_authorization: bool,
    /// Header name -> claim. Default `{X-Auth-Subject: sub, X-Auth-Scopes: scope}`.
    pub(crate) identity_headers: Option<RawHeaderMap>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ForwardAuth")]
pub(crate) struct RawForwardAuth {
    /// Its own listener, `IP:PORT`.
    pub(crate) listen: String,
    /// CIDRs (`127.0.0.1/32`) or bare IPs allowed to ask. Default loopback only.
    pub(crate) trusted_peers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Route")]
pub(crate) struct RawRoute {
    /// Path pattern: literal segments, `{name}`, a final `**`.
    pub(crate) path: String,
    /// Omitted: every method. `GET` also covers `HEAD`.
    pub(crate) methods: Option<Vec<String>>,
    /// The token must carry all of these.
    pub(crate) scopes: Option<Vec<RawText>>,
    /// The token must carry at least one of these.
    pub(crate) any_scopes: Option<Vec<RawText>>,
    /// No token needed.
    #[serde(default)]
    pub(crate) public: bool,
    /// This route's upstream, instead of the top-level one.
    pub(crate) upstream: Option<String>,
}

/// A duration as written: `500ms`, `30s`, `5m`, `1h`, `1m30s`. A bare number
/// is kept (as text) so validation can point at it with a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawDuration {
    pub(crate) text: String,
    pub(crate) bare_number: bool,
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = d.deserialize_any(ScalarVisitor("a duration such as `30s`"))?;
        Ok(RawDuration {
            text: t.text,
            bare_number: t.number,
        })
    }
}

impl JsonSchema for RawDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h))+$",
            "description": "A duration: 500ms, 30s, 5m, 1h, 1m30s",
        })
    }
}

/// A free-text scalar (audience, scope, client id): strings, and numbers or
/// booleans taken as the text they were written as (an audience `12345`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawText(pub(crate) String);

impl<'de> Deserialize<'de> for RawText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RawText(d.deserialize_any(ScalarVisitor("a string"))?.text))
    }
}

impl JsonSchema for RawText {
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

struct Scalar {
    text: String,
    number: bool,
}

struct ScalarVisitor(&'static str);

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar {
            text: v.to_string(),
            number: false,
        })
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar {
            text: v.to_string(),
            number: false,
        })
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar {
            text: v.to_string(),
            number: true,
        })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar {
            text: v.to_string(),
            number: true,
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar {
            text: v.to_string(),
            number: true,
        })
    }
}

/// `identity_headers`: header name -> claim, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RawHeaderMap(pub(crate) Vec<(String, RawText)>);

impl<'de> Deserialize<'de> for RawHeaderMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeaderMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header name -> claim name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeaderMap, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, RawText>()? {
                    out.push((k, v));
                }
                Ok(RawHeaderMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl JsonSchema for RawHeaderMap {
    fn schema_name() -> Cow<'static, str> {
        "IdentityHeaders".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "additionalProperties": { "type": "string" },
            "description": "Header name -> claim name",
        })
    }
}

/// The JSON Schema of routes.yaml, pretty-printed.
pub(crate) fn json_schema() -> String {
    let schema = schemars::schema_for!(RawConfig);
    serde_json::to_string_pretty(&schema).expect("a JSON Schema serializes")
}
