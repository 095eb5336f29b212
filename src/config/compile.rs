//! Text -> raw structs -> validated [`Config`], collecting every error with its position.
//!
//! Passes, in order:
//! 1. serde_yaml parses the text into a `Value` (a syntax error stops here:
//!    one error, at serde_yaml's own location).
//! 2. `${NAME}` is substituted in every string value of that tree.
//! 3. The tree is deserialized into the raw structs piecewise — each top-level
//!    key, each issuer and each route on its own — so one typo does not hide
//!    the next; serde_path_to_error names the failing key path, which
//!    [`Positions`] turns into a line and column.
//! 4. Each raw value is checked and converted; every problem is collected.
//! 5. The routes that converted cleanly go to `RouteTable::build`, whose
//!    errors are mapped back to the routes' positions in the file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::positions::{field, item, Pos, Positions};
use super::raw::{
    RawAuthMethod, RawConfig, RawDuration, RawForwardAuth, RawIntrospection, RawIssuer, RawRoute,
    RawText,
};
use super::values::{parse_cidr, parse_duration, parse_url, substitute_env, UrlUse};
use super::{
    Config, ConfigError, ConfigErrors, ForwardAuthSettings, ForwardSettings, Limits, Timeouts,
    TlsFiles, Upstream,
};
use crate::auth::{
    Algorithm, AuthSettings, ClientAuthMethod, IntrospectionSettings, IssuerSettings,
};
use crate::route::{Requirement, RouteError, RouteSpec, RouteTable};

/// hyper's smallest accepted `max_buf_size`.
pub(crate) const MIN_HEADER_BYTES: u64 = 8192;
/// `limits.max_upstream_requests` when unset, per worker thread: Envoy's
/// default of 1,024 requests per cluster on a 4-core machine.
const DEFAULT_UPSTREAM_REQUESTS_PER_WORKER: usize = 256;
/// The largest `limits.max_connections` / `max_upstream_requests`: both
/// become semaphores, which count at most this far.
const MAX_COUNT: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// A count limit: `default` when unset; 0 and more than [`MAX_COUNT`] are
/// errors.
fn count(ctx: &mut Ctx<'_>, key: &str, value: Option<u64>, default: usize) -> usize {
    let Some(n) = value else {
        return default;
    };
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n == 0 {
        ctx.error(key, format!("{key}: must be at least 1"));
    } else if n > MAX_COUNT {
        ctx.error(key, format!("{key}: must be at most {MAX_COUNT}"));
    }
    n.clamp(1, MAX_COUNT)
}

const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// RFC 9110 methods and PATCH; others are accepted with a warning.
const STANDARD_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Header names an identity header may not take: hop-by-hop headers, and
/// headers whose meaning the proxy itself owns.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Collects errors and warnings, each at a position.
pub(crate) struct Ctx<'a> {
    file: String,
    pos: &'a Positions,
    errors: Vec<(Pos, String)>,
    warnings: Vec<(Pos, String)>,
    /// Positions where `${NAME}` failed: later errors there would only repeat it.
    env_failed: HashSet<Pos>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(file: &str, pos: &'a Positions) -> Ctx<'a> {
        Ctx {
            file: file.to_string(),
            pos,
            errors: Vec::new(),
            warnings: Vec::new(),
            env_failed: HashSet::new(),
        }
    }

    /// The errors so far, in file order.
    #[cfg(test)]
    pub(crate) fn errors(&self) -> Vec<ConfigError> {
        Ctx::finish(self.errors.clone(), &self.file)
    }

    fn error_at(&mut self, at: Pos, message: impl Into<String>) {
        if !self.env_failed.contains(&at) {
            self.errors.push((at, message.into()));
        }
    }
    /// An error about the value at `path`.
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.error_at(self.pos.value(path), message);
    }
    /// An error about the key of the map entry at `path`.
    fn error_key(&mut self, path: &str, message: impl Into<String>) {
        self.error_at(self.pos.key(path), message);
    }
    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push((self.pos.value(path), message.into()));
    }
    fn finish(list: Vec<(Pos, String)>, file: &str) -> Vec<ConfigError> {
        let mut list = list;
        list.sort_by_key(|(p, _)| *p); // stable: same position keeps discovery order
        list.into_iter()
            .map(|(p, message)| ConfigError {
                file: file.to_string(),
                line: p.line,
                col: p.col,
                message,
            })
            .collect()
    }
}

/// The whole pipeline; `env` looks up `${NAME}` (tests pass their own).
pub(crate) fn compile(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let mut tree: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(ConfigErrors(vec![syntax_error(&file, &e)])),
    };
    let positions = Positions::index(text);
    let mut ctx = Ctx::new(&file, &positions);
    substitute_tree(&mut ctx, &mut tree, "", env);
    let raw = deserialize_raw(&mut ctx, tree);
    let config = convert(&mut ctx, raw, path);
    let Ctx {
        file,
        errors,
        warnings,
        ..
    } = ctx;
    match config {
        Some(mut config) if errors.is_empty() => {
            config.warnings = Ctx::finish(warnings, &file);
            Ok(config)
        }
        _ if errors.is_empty() => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 1,
            col: 1,
            message: "internal error: the config was rejected without a reason".into(),
        }])),
        _ => Err(ConfigErrors(Ctx::finish(errors, &file))),
    }
}

fn syntax_error(file: &str, e: &serde_yaml::Error) -> ConfigError {
    let (line, col) = e
        .location()
        .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
    let mut message = e.to_string();
    // serde_yaml appends " at line L column C" — the position is already in front.
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    ConfigError {
        file: file.to_string(),
        line,
        col,
        message: format!("YAML: {message}"),
    }
}

/// Pass 2: `${NAME}` in every string value (map keys are left alone).
fn substitute_tree(
    ctx: &mut Ctx<'_>,
    v: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) {
    match v {
        Value::String(s) => match substitute_env(s, env) {
            Ok(new) => *s = new,
            Err(msg) => {
                let at = ctx.pos.value(path);
                ctx.error_at(at, msg);
                ctx.env_failed.insert(at);
            }
        },
        Value::Sequence(items) => {
            for (i, x) in items.iter_mut().enumerate() {
                substitute_tree(ctx, x, &item(path, i), env);
            }
        }
        Value::Mapping(m) => {
            for (k, x) in m.iter_mut() {
                let key = key_text(k);
                substitute_tree(ctx, x, &field(path, &key), env);
            }
        }
        Value::Tagged(t) => substitute_tree(ctx, &mut t.value, path, env),
        _ => {}
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => "?".into(),
    }
}

/// The raw config plus, for routes and issuers, each item's index in the file
/// (items that failed to deserialize are left out).
#[derive(Default)]
pub(crate) struct Raw {
    pub(crate) config: RawConfig,
    pub(crate) issuers: Vec<(usize, RawIssuer)>,
    pub(crate) routes: Vec<(usize, RawRoute)>,
    /// Routes that had serde errors: checked on their own, but kept out of
    /// cross-route checks (a dropped key could fake a conflict).
    pub(crate) tainted_routes: Vec<usize>,
    /// How many issuers the file lists (some may have failed to deserialize).
    pub(crate) issuers_written: usize,
}

/// Pass 3: piecewise deserialization.
fn deserialize_raw(ctx: &mut Ctx<'_>, tree: Value) -> Raw {
    let mut raw = Raw::default();
    let mut top = match tree {
        Value::Null => Mapping::new(),
        Value::Mapping(m) => m,
        _ => {
            ctx.error(
                "",
                "routes.yaml must be a mapping of keys (listen, issuers, routes, ...)",
            );
            return raw;
        }
    };
    if let Some(v) = top.remove("routes") {
        let mut tainted = Vec::new();
        if let Value::Sequence(items) = v {
            for (i, x) in items.into_iter().enumerate() {
                let n = ctx.errors.len();
                if let Some(r) = read::<RawRoute>(ctx, &item("routes", i), x) {
                    raw.routes.push((i, r));
                }
                if ctx.errors.len() > n {
                    tainted.push(i);
                }
            }
        } else {
            raw.routes = read_list(ctx, "routes", v).0;
        }
        raw.tainted_routes = tainted;
    }
    if let Some(v) = top.remove("issuers") {
        let (issuers, written) = read_list(ctx, "issuers", v);
        raw.issuers = issuers;
        raw.issuers_written = written;
    }
    if let Some(c) = read::<RawConfig>(ctx, "", Value::Mapping(top)) {
        raw.config = c;
    }
    raw
}

/// A list whose items are read one by one; items that cannot be read are
/// reported and skipped. Also returns how many items were written.
fn read_list<T: DeserializeOwned>(
    ctx: &mut Ctx<'_>,
    key: &str,
    v: Value,
) -> (Vec<(usize, T)>, usize) {
    match v {
        Value::Null => (Vec::new(), 0),
        Value::Sequence(items) => {
            let written = items.len();
            let mut out = Vec::new();
            for (i, x) in items.into_iter().enumerate() {
                if let Some(t) = read::<T>(ctx, &item(key, i), x) {
                    out.push((i, t));
                }
            }
            (out, written)
        }
        _ => {
            ctx.error(key, format!("`{key}` must be a list (`- ...` items)"));
            (Vec::new(), 1)
        }
    }
}

/// One step of a key path inside a `Value`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn path_of(prefix: &str, steps: &[Step]) -> String {
    let mut path = prefix.to_string();
    for s in steps {
        path = match s {
            Step::Key(k) => field(&path, k),
            Step::Index(i) => item(&path, *i),
        };
    }
    path
}

/// Deserializes `v` (found at `prefix`) as `T`, reporting every problem
/// serde finds: after each one, the offending key is dropped and the
/// deserialization retried, so a section reports all its unknown keys and
/// bad values, not only the first. `Some` when what is left deserializes
/// (the errors are recorded either way); `None` when a required key is
/// missing or the value as a whole has the wrong shape.
fn read<T: DeserializeOwned>(ctx: &mut Ctx<'_>, prefix: &str, mut v: Value) -> Option<T> {
    use serde_path_to_error::Segment;
    let mut dropped: Vec<String> = Vec::new();
    // Each round drops one key, so this ends; the bound is a safety net.
    for _ in 0..256 {
        let e = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let mut steps: Vec<Step> = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                Segment::Seq { index } => Some(Step::Index(*index)),
                Segment::Map { key } => Some(Step::Key(key.clone())),
                Segment::Enum { .. } | Segment::Unknown => None,
            })
            .collect();
        let msg = e.inner().to_string();
        let msg = match msg.find(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default().to_string();
            let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
            if steps.last() != Some(&Step::Key(name.clone())) {
                steps.push(Step::Key(name.clone()));
            }
            let key_path = path_of(prefix, &steps);
            let place = match path_of(prefix, &steps[..steps.len() - 1]) {
                p if p.is_empty() => "at the top level".to_string(),
                p => format!("in {p}"),
            };
            let mut text = format!("unknown key `{name}` {place}");
            if let Some(best) = closest(&name, &expected) {
                text.push_str(&format!("; did you mean `{best}`?"));
            }
            text.push_str(&format!(" (known keys: {})", expected.join(", ")));
            ctx.error_key(&key_path, text);
            if !remove(&mut v, &steps) {
                return None;
            }
            continue;
        }
        if let Some(rest) = msg.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or_default();
            let at = path_of(prefix, &steps);
            if !dropped.contains(&field(&at, name)) {
                let place = if at.is_empty() {
                    "the top level"
                } else {
                    at.as_str()
                };
                ctx.error(&at, format!("{place}: missing key `{name}`"));
            }
            return None;
        }
        let at = path_of(prefix, &steps);
        // serde names the raw struct it expected; say what it means instead.
        let msg = match msg.find("expected struct Raw") {
            Some(i) => format!("{}expected a mapping of keys", &msg[..i]),
            None => msg,
        };
        let msg = if msg.ends_with("expected a boolean") {
            format!("{msg}; write `true` or `false`")
        } else {
            msg
        };
        if at.is_empty() {
            ctx.error(&at, msg);
        } else {
            ctx.error(&at, format!("{at}: {msg}"));
        }
        // Drop the key holding the bad value (a whole list for a bad item, so
        // later items keep their indices) and go on.
        while matches!(steps.last(), Some(Step::Index(_))) {
            steps.pop();
        }
        if steps.is_empty() || !remove(&mut v, &steps) {
            return None;
        }
        dropped.push(path_of(prefix, &steps));
    }
    None
}

/// Removes the map entry that `steps` (ending in a key) leads to.
fn remove(v: &mut Value, steps: &[Step]) -> bool {
    let Some((last, init)) = steps.split_last() else {
        return false;
    };
    let mut cur = v;
    for s in init {
        while let Value::Tagged(t) = cur {
            cur = &mut t.value;
        }
        cur = match (s, cur) {
            (Step::Key(k), Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(x) => x,
                None => return false,
            },
            (Step::Index(i), Value::Sequence(items)) => match items.get_mut(*i) {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    while let Value::Tagged(t) = cur {
        cur = &mut t.value;
    }
    match (last, cur) {
        (Step::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        _ => false,
    }
}

/// The candidate within edit distance 2 of `name`, if exactly one is closest.
fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn duration(
    ctx: &mut Ctx<'_>,
    path: &str,
    raw: Option<&RawDuration>,
    default: Duration,
) -> Duration {
    let Some(raw) = raw else { return default };
    let parsed = if raw.bare_number {
        Err(format!(
            "`{t}` is a bare number; durations need a unit, e.g. `{t}s` or `{t}ms`",
            t = raw.text
        ))
    } else {
        parse_duration(&raw.text)
    };
    match parsed {
        Ok(d) => d,
        Err(m) => {
            ctx.error(path, format!("{path}: {m}"));
            default
        }
    }
}

/// A duration that must be more than zero (timeouts, refresh intervals).
fn positive(
    ctx: &mut Ctx<'_>,
    path: &str,
    raw: Option<&RawDuration>,
    default: Duration,
) -> Duration {
    let d = duration(ctx, path, raw, default);
    if d.is_zero() {
        ctx.error(path, format!("{path}: must be more than zero"));
        return default;
    }
    d
}

fn socket_addr(ctx: &mut Ctx<'_>, path: &str, raw: Option<&str>, default: &str) -> SocketAddr {
    let fallback: SocketAddr = default.parse().expect("default addresses parse");
    let Some(text) = raw else { return fallback };
    match text.trim().parse() {
        Ok(a) => a,
        Err(_) => {
            ctx.error(
                path,
                format!("{path}: `{text}` is not an IP:PORT socket address (e.g. `0.0.0.0:8080`, `[::1]:9901`; host names are not resolved)"),
            );
            fallback
        }
    }
}

fn url(ctx: &mut Ctx<'_>, path: &str, text: &str, usage: UrlUse) -> Option<http::Uri> {
    match parse_url(text, usage) {
        Ok(u) => {
            if u.insecure && usage != UrlUse::Upstream {
                ctx.warn(
                    path,
                    format!("{path}: `{}` is plain http:// to a non-loopback host; keys and tokens travel unprotected", text.trim()),
                );
            }
            Some(u.uri)
        }
        Err(m) => {
            ctx.error(path, format!("{path}: {m}"));
            None
        }
    }
}

/// A non-empty list of non-empty texts, deduplicated; `empty_hint` ends the message for `[]`.
fn text_list(ctx: &mut Ctx<'_>, path: &str, list: &[RawText], empty_hint: &str) -> Vec<String> {
    if list.is_empty() {
        ctx.error(path, format!("{path}: must not be empty; {empty_hint}"));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let s = t.0.trim();
        if s.is_empty() {
            ctx.error(
                &item(path, i),
                format!("{}: must not be empty", item(path, i)),
            );
        } else if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

/// Pass 4 and 5. `None` only when errors were recorded.
fn convert(ctx: &mut Ctx<'_>, raw: Raw, path: &Path) -> Option<Config> {
    let c = &raw.config;
    let listen = socket_addr(ctx, "listen", c.listen.as_deref(), "0.0.0.0:8080");
    let admin_listen = socket_addr(
        ctx,
        "admin_listen",
        c.admin_listen.as_deref(),
        "127.0.0.1:9901",
    );
    if clash(listen, admin_listen) {
        let at = if ctx.pos.contains("admin_listen") {
            "admin_listen"
        } else {
            "listen"
        };
        ctx.error(
            at,
            format!("{at}: admin_listen {admin_listen} clashes with listen {listen}"),
        );
    }

    let tls = c.tls.as_ref().map(|t| {
        for (k, v) in [("cert", &t.cert), ("key", &t.key)] {
            if v.trim().is_empty() {
                ctx.error(
                    &format!("tls.{k}"),
                    format!("tls.{k}: must name a PEM file"),
                );
            }
        }
        TlsFiles {
            cert: PathBuf::from(&t.cert),
            key: PathBuf::from(&t.key),
        }
    });

    let mut upstreams: Vec<Upstream> = Vec::new();
    let top_upstream = c.upstream.as_deref().and_then(|u| {
        let origin = url(ctx, "upstream", u, UrlUse::Upstream)?;
        Some(intern_upstream(&mut upstreams, origin))
    });

    let issuers = issuers(ctx, &raw.issuers);
    let introspection = c.introspection.as_ref().and_then(|i| introspection(ctx, i));

    let t = c.timeouts.as_ref();
    let timeouts = Timeouts {
        upstream_connect: positive(
            ctx,
            "timeouts.upstream_connect",
            t.and_then(|t| t.upstream_connect.as_ref()),
            Duration::from_secs(5),
        ),
        upstream_response: positive(
            ctx,
            "timeouts.upstream_response",
            t.and_then(|t| t.upstream_response.as_ref()),
            Duration::from_secs(30),
        ),
        client_header: positive(
            ctx,
            "timeouts.client_header",
            t.and_then(|t| t.client_header.as_ref()),
            Duration::from_secs(10),
        ),
        idle: positive(
            ctx,
            "timeouts.idle",
            t.and_then(|t| t.idle.as_ref()),
            Duration::from_secs(60),
        ),
    };
    let idp_timeout = positive(
        ctx,
        "timeouts.idp",
        t.and_then(|t| t.idp.as_ref()),
        Duration::from_secs(5),
    );

    let l = c.limits.as_ref();
    let max_header_bytes = l.and_then(|l| l.max_header_bytes).unwrap_or(65536);
    if max_header_bytes < MIN_HEADER_BYTES {
        ctx.error("limits.max_header_bytes", format!("limits.max_header_bytes: {max_header_bytes} is below the minimum of {MIN_HEADER_BYTES}"));
    }
    let max_connections = count(
        ctx,
        "limits.max_connections",
        l.and_then(|l| l.max_connections),
        10_000,
    );
    let workers = crate::workers::default_count().max(1);
    let max_upstream_requests = count(
        ctx,
        "limits.max_upstream_requests",
        l.and_then(|l| l.max_upstream_requests),
        DEFAULT_UPSTREAM_REQUESTS_PER_WORKER * workers,
    );
    let limits = Limits {
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        max_connections,
        max_upstream_requests_per_worker: max_upstream_requests.div_ceil(workers),
    };

    let leeway = duration(ctx, "leeway", c.leeway.as_ref(), Duration::from_secs(30));
    let shutdown_grace = duration(
        ctx,
        "shutdown_grace",
        c.shutdown_grace.as_ref(),
        Duration::from_secs(30),
    );

    let forward = forward(ctx, c);
    let forward_auth = c
        .forward_auth
        .as_ref()
        .map(|f| forward_auth(ctx, f, &[listen, admin_listen]));

    // Routes.
    let mut specs = Vec::new();
    let mut origin_of_spec = Vec::new();
    let mut first_protected: Option<usize> = None;
    for (i, r) in &raw.routes {
        let p = item("routes", *i);
        let upstream = match r.upstream.as_deref() {
            Some(u) => url(ctx, &field(&p, "upstream"), u, UrlUse::Upstream)
                .map(|origin| intern_upstream(&mut upstreams, origin)),
            None => {
                // A top-level `upstream` that is there but wrong, or a route
                // whose own `upstream` was dropped as unreadable, was reported already.
                let tainted = raw.tainted_routes.contains(i);
                if top_upstream.is_none() && !ctx.pos.contains("upstream") && !tainted {
                    ctx.error(&p, format!("{p}: route `{}` names no upstream and there is no top-level `upstream`", r.path));
                }
                top_upstream
            }
        };
        let requirement = requirement(ctx, &p, r);
        let methods = methods(ctx, &p, r.methods.as_deref());
        if raw.tainted_routes.contains(i) {
            continue;
        }
        if let (Some(upstream), Some(requirement), Some(methods)) = (upstream, requirement, methods)
        {
            if requirement != Requirement::Public && first_protected.is_none() {
                first_protected = Some(*i);
            }
            specs.push(RouteSpec {
                path: r.path.clone(),
                methods,
                requirement,
                upstream,
            });
            origin_of_spec.push(*i);
        }
    }
    if raw.routes.is_empty() && ctx.errors.is_empty() {
        ctx.warn("routes", "no routes: every request will get 404");
    }
    if let Some(i) = first_protected {
        if raw.issuers_written == 0 && !ctx.pos.contains("introspection") {
            let msg = format!(
                "route `{}` needs a token, but no issuers (and no introspection) are configured to verify one",
                raw.routes.iter().find(|(j, _)| *j == i).map_or("", |(_, r)| r.path.as_str())
            );
            if ctx.pos.contains("issuers") {
                ctx.error("issuers", format!("issuers: {msg}"));
            } else {
                ctx.error(&item("routes", i), format!("{}: {msg}", item("routes", i)));
            }
        }
    }
    let routes = match RouteTable::build(specs) {
        Ok(t) => Some(t),
        Err(errs) => {
            place_route_errors(ctx, &errs, &origin_of_spec);
            None
        }
    };

    if !ctx.errors.is_empty() {
        return None;
    }
    Some(Config {
        source: path.to_path_buf(),
        listen,
        admin_listen,
        tls,
        upstreams,
        auth: AuthSettings {
            issuers,
            introspection,
            leeway,
            idp_timeout,
            ca_file: c.ca_file.as_ref().map(PathBuf::from),
        },
        timeouts,
        limits,
        forward,
        forward_auth,
        shutdown_grace,
        routes: routes?,
        warnings: Vec::new(),
        source_digest: None,
    })
}

/// `RouteTable::build` errors, each at its route in the file. `origin[i]` is
/// the file index of spec `i` (routes with errors were not handed over, so the
/// two can differ). For a conflict, `RouteError.index` is the later route.
pub(crate) fn place_route_errors(ctx: &mut Ctx<'_>, errs: &[RouteError], origin: &[usize]) {
    for e in errs {
        let file_index = origin.get(e.index).copied().unwrap_or(e.index);
        let p = item("routes", file_index);
        let message = renumber_route_mentions(&e.message, origin);
        ctx.error(&p, format!("{p}: {message}"));
    }
    if errs.is_empty() {
        ctx.error("routes", "routes: the route table could not be built");
    }
}

/// The route table numbers routes as it was handed them (`route #N`, 1-based);
/// in the file, routes with errors were left out, so renumber to file positions.
fn renumber_route_mentions(message: &str, origin: &[usize]) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("route #") {
        let (before, after) = rest.split_at(at + "route #".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) if n >= 1 => {
                let file_n = origin.get(n - 1).map_or(n, |i| i + 1);
                out.push_str(&file_n.to_string());
            }
            _ => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Two listeners that cannot both bind.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The index of `origin` in `upstreams`, adding it if new.
fn intern_upstream(upstreams: &mut Vec<Upstream>, origin: http::Uri) -> usize {
    let origin = origin_only(&origin);
    if let Some(i) = upstreams.iter().position(|u| u.origin == origin) {
        return i;
    }
    upstreams.push(Upstream { origin });
    upstreams.len() - 1
}

/// `scheme://authority` with no path (the scheme and host lower-cased).
fn origin_only(u: &http::Uri) -> http::Uri {
    let scheme = u.scheme_str().unwrap_or("http").to_ascii_lowercase();
    let authority = u
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .unwrap_or_default();
    format!("{scheme}://{authority}")
        .parse()
        .unwrap_or_else(|_| u.clone())
}

fn issuers(ctx: &mut Ctx<'_>, raw: &[(usize, RawIssuer)]) -> Vec<IssuerSettings> {
    let mut out: Vec<IssuerSettings> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (i, r) in raw {
        let p = item("issuers", *i);
        let issuer_path = field(&p, "issuer");
        let ok_issuer = url(ctx, &issuer_path, &r.issuer, UrlUse::Issuer).is_some();
        if seen.contains(&r.issuer) {
            ctx.error(
                &issuer_path,
                format!("{issuer_path}: issuer `{}` is listed twice", r.issuer),
            );
        }
        seen.push(r.issuer.clone());
        let audiences = text_list(
            ctx,
            &field(&p, "audiences"),
            &r.audiences,
            "a token's `aud` must contain one of them",
        );
        let jwks_uri = r
            .jwks_uri
            .as_deref()
            .map(|u| url(ctx, &field(&p, "jwks_uri"), u, UrlUse::Endpoint));
        let algorithms = algorithms(ctx, &field(&p, "algorithms"), r.algorithms.as_deref());
        let jwks_refresh = positive(
            ctx,
            &field(&p, "jwks_refresh"),
            r.jwks_refresh.as_ref(),
            Duration::from_secs(300),
        );
        if ok_issuer {
            out.push(IssuerSettings {
                issuer: r.issuer.clone(),
                audiences,
                jwks_uri: jwks_uri.flatten(),
                algorithms,
                require_at_jwt: r.require_at_jwt,
                jwks_refresh,
            });
        }
    }
    out
}

fn algorithms(ctx: &mut Ctx<'_>, path: &str, raw: Option<&[String]>) -> Vec<Algorithm> {
    let Some(raw) = raw else {
        return vec![Algorithm::RS256, Algorithm::ES256];
    };
    if raw.is_empty() {
        ctx.error(
            path,
            format!("{path}: must not be empty; omit it for the default [RS256, ES256]"),
        );
    }
    let mut out = Vec::new();
    for (i, name) in raw.iter().enumerate() {
        let n = name.trim();
        match ALGORITHMS.iter().find(|(k, _)| *k == n) {
            Some((_, alg)) => {
                if !out.contains(alg) {
                    out.push(*alg);
                }
            }
            None => {
                let upper = n.to_ascii_uppercase();
                let msg = if upper.starts_with("HS") || upper == "NONE" {
                    format!("`{n}`: HMAC and `none` are never accepted for a JWKS issuer")
                } else if let Some((k, _)) =
                    ALGORITHMS.iter().find(|(k, _)| k.eq_ignore_ascii_case(n))
                {
                    format!("`{n}`: algorithm names are case-sensitive; write `{k}`")
                } else {
                    let all: Vec<&str> = ALGORITHMS.iter().map(|(k, _)| *k).collect();
                    format!(
                        "`{n}` is not a supported algorithm (one of {})",
                        all.join(", ")
                    )
                };
                let ip = item(path, i);
                ctx.error(&ip, format!("{ip}: {msg}"));
            }
        }
    }
    out
}

fn introspection(ctx: &mut Ctx<'_>, r: &RawIntrospection) -> Option<IntrospectionSettings> {
    let p = "introspection";
    let endpoint = url(ctx, "introspection.endpoint", &r.endpoint, UrlUse::Endpoint);
    for (k, v) in [
        ("client_id", &r.client_id),
        ("client_secret", &r.client_secret),
    ] {
        if v.0.is_empty() {
            ctx.error(&field(p, k), format!("{p}.{k}: must not be empty"));
        }
    }
    let issuer = r.issuer.as_ref().map(|s| s.trim().to_string());
    if issuer.as_deref() == Some("") {
        ctx.error(
            "introspection.issuer",
            "introspection.issuer: must not be empty; omit it to skip the check",
        );
    }
    let audiences = r.audiences.as_ref().map(|a| {
        text_list(
            ctx,
            "introspection.audiences",
            a,
            "omit it to skip the audience check",
        )
    });
    let cache_ttl = duration(
        ctx,
        "introspection.cache_ttl",
        r.cache_ttl.as_ref(),
        Duration::from_secs(60),
    );
    Some(IntrospectionSettings {
        endpoint: endpoint?,
        client_id: r.client_id.0.clone(),
        client_secret: r.client_secret.0.clone(),
        auth_method: match r.auth_method {
            None | Some(RawAuthMethod::ClientSecretBasic) => ClientAuthMethod::ClientSecretBasic,
            Some(RawAuthMethod::ClientSecretPost) => ClientAuthMethod::ClientSecretPost,
        },
        issuer,
        audiences,
        cache_ttl,
    })
}

fn forward(ctx: &mut Ctx<'_>, c: &RawConfig) -> ForwardSettings {
    let f = c.forward.as_ref();
    let mut identity_headers: Vec<(http::HeaderName, String)> = Vec::new();
    match f.and_then(|f| f.identity_headers.as_ref()) {
        None => {
            identity_headers.push((
                http::HeaderName::from_static("x-auth-subject"),
                "sub".into(),
            ));
            identity_headers.push((
                http::HeaderName::from_static("x-auth-scopes"),
                "scope".into(),
            ));
        }
        Some(map) => {
            let mut folded: Vec<String> = Vec::new();
            for (name, claim) in &map.0 {
                let p = field("forward.identity_headers", name);
                let header = match http::HeaderName::from_bytes(name.trim().as_bytes()) {
                    Ok(h) => h,
                    Err(_) => {
                        ctx.error_key(&p, format!("forward.identity_headers: `{name}` is not a valid HTTP header name"));
                        continue;
                    }
                };
                if RESERVED_HEADERS.contains(&header.as_str()) {
                    ctx.error_key(&p, format!("forward.identity_headers: `{name}` cannot be an identity header (hop-by-hop or owned by the proxy)"));
                    continue;
                }
                let fold = header.as_str().replace('_', "-");
                if folded.contains(&fold) {
                    ctx.error_key(&p, format!("forward.identity_headers: `{name}` is listed twice (names are compared ignoring case and `_` vs `-`)"));
                    continue;
                }
                folded.push(fold);
                if claim.0.trim().is_empty() {
                    ctx.error(
                        &p,
                        format!("forward.identity_headers.{name}: must name a claim, e.g. `sub`"),
                    );
                    continue;
                }
                identity_headers.push((header, claim.0.trim().to_string()));
            }
        }
    }
    ForwardSettings {
        strip_authorization: f.is_some_and(|f| f.strip_authorization),
        identity_headers,
    }
}

fn forward_auth(
    ctx: &mut Ctx<'_>,
    r: &RawForwardAuth,
    others: &[SocketAddr],
) -> ForwardAuthSettings {
    let listen = socket_addr(
        ctx,
        "forward_auth.listen",
        Some(&r.listen),
        "127.0.0.1:8081",
    );
    if others.iter().any(|o| clash(listen, *o)) {
        ctx.error(
            "forward_auth.listen",
            format!("forward_auth.listen: {listen} is already used by another listener"),
        );
    }
    let trusted_peers = match &r.trusted_peers {
        None => vec![
            (std::net::Ipv4Addr::LOCALHOST.into(), 32),
            (std::net::Ipv6Addr::LOCALHOST.into(), 128),
        ],
        Some(list) => {
            if list.is_empty() {
                ctx.error("forward_auth.trusted_peers", "forward_auth.trusted_peers: must not be empty (every request would get 403); omit it to trust loopback only");
            }
            let mut out = Vec::new();
            for (i, t) in list.iter().enumerate() {
                let p = item("forward_auth.trusted_peers", i);
                match parse_cidr(t) {
                    Ok(c) => out.push(c),
                    Err(m) => ctx.error(&p, format!("{p}: {m}")),
                }
            }
            out
        }
    };
    ForwardAuthSettings {
        listen,
        trusted_peers,
    }
}

/// `None` when an error was recorded.
fn requirement(ctx: &mut Ctx<'_>, p: &str, r: &RawRoute) -> Option<Requirement> {
    let mut ok = true;
    if r.public {
        for (k, v) in [("scopes", &r.scopes), ("any_scopes", &r.any_scopes)] {
            if v.is_some() {
                ctx.error_key(&field(p, k), format!("{p}: `public: true` together with `{k}`: a public route checks no token; drop one of them"));
                ok = false;
            }
        }
    }
    if r.scopes.is_some() && r.any_scopes.is_some() {
        ctx.error_key(
            &field(p, "any_scopes"),
            format!("{p}: `scopes` (all of) and `any_scopes` (one of) together; use one of them"),
        );
        ok = false;
    }
    let mut list = |k: &str, v: &[RawText]| -> Box<[Box<str>]> {
        let path = field(p, k);
        if v.is_empty() {
            ctx.error(
                &path,
                format!("{path}: empty list; omit `{k}` to accept any valid token"),
            );
            ok = false;
        }
        let mut out: Vec<Box<str>> = Vec::new();
        for (i, s) in v.iter().enumerate() {
            let s = s.0.as_str();
            let valid = !s.is_empty()
                && s.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
            if !valid {
                let ip = item(&path, i);
                ctx.error(&ip, format!("{ip}: `{s}` is not a scope token (no spaces, quotes or backslashes; one scope per item)"));
                ok = false;
            } else if !out.iter().any(|o| &**o == s) {
                out.push(s.into());
            }
        }
        out.into_boxed_slice()
    };
    let req = if r.public {
        Requirement::Public
    } else if let Some(s) = &r.scopes {
        Requirement::AllScopes(list("scopes", s))
    } else if let Some(s) = &r.any_scopes {
        Requirement::AnyScopes(list("any_scopes", s))
    } else {
        Requirement::AnyToken
    };
    ok.then_some(req)
}

/// Upper-cased, checked, deduplicated; `Some(None)` = every method; `None` on error.
fn methods(ctx: &mut Ctx<'_>, p: &str, raw: Option<&[String]>) -> Option<Option<Vec<String>>> {
    let Some(raw) = raw else { return Some(None) };
    let path = field(p, "methods");
    let mut ok = true;
    if raw.is_empty() {
        ctx.error(
            &path,
            format!("{path}: empty list; omit `methods` to match every method"),
        );
        ok = false;
    }
    let mut out: Vec<String> = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        let up = m.trim().to_ascii_uppercase();
        if up.is_empty() || http::Method::from_bytes(up.as_bytes()).is_err() {
            let ip = item(&path, i);
            ctx.error(&ip, format!("{ip}: `{m}` is not an HTTP method"));
            ok = false;
        } else {
            if !STANDARD_METHODS.contains(&up.as_str()) {
                let ip = item(&path, i);
                ctx.warn(
                    &ip,
                    format!("{ip}: `{up}` is not a standard HTTP method (a typo?)"),
                );
            }
            if !out.contains(&up) {
                out.push(up);
            }
        }
    }
    ok.then_some(Some(out))
}
