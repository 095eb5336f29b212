//! The compiled route table: pattern and method validation, conflict
//! detection, and the segment trie that [`RouteTable::lookup`] searches.
//!
//! # The trie
//!
//! Each node stands for a sequence of pattern segments; its children are the
//! literal segments (a hash map keyed by the percent-decoded literal), at most one `{param}` child (parameter names
//! do not matter for matching), the routes whose pattern ends at the node
//! (`terminal`) and the routes whose pattern is the node followed by `**`
//! (`glob`). Both route lists hold method-naming routes before the one (at
//! most) that allows every method.
//!
//! `lookup` walks the path segment by segment, depth first, in priority order
//! literal > param > glob, backtracking when a subtree has no route that
//! allows the method. The first route found is therefore the most specific
//! one that allows the method. The cost is proportional to the path's depth
//! in the common case, bounded by the number of trie nodes in the worst case
//! (each node is visited at most once per lookup, since a node's depth fixes
//! the rest of the path), and independent of the number of routes; it never
//! allocates.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::normalize::{hex_value, normalize};

/// What a route demands of the request's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `public: true`: no token is looked at.
    Public,
    /// No scopes named: any valid token will do.
    AnyToken,
    /// `scopes: [...]`: the token must carry all of these.
    AllScopes(Box<[Box<str>]>),
    /// `any_scopes: [...]`: the token must carry at least one of these.
    AnyScopes(Box<[Box<str>]>),
}

/// One route as the config layer hands it over, before compilation.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The path pattern, e.g. `/api/messages/{id}` or `/api/**`.
    pub path: String,
    /// Upper-case method names; `None` = every method.
    pub methods: Option<Vec<String>>,
    pub requirement: Requirement,
    /// Index into the config's upstream list.
    pub upstream: usize,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Position of the route in the file (0-based), for errors and metrics.
    pub index: usize,
    /// The pattern as written, e.g. `/api/messages/{id}`.
    pub pattern: Box<str>,
    /// The methods as written; `None` = every method. (`GET` also matches
    /// `HEAD` requests even when `HEAD` is not listed.)
    pub methods: Option<Box<[Box<str>]>>,
    pub requirement: Requirement,
    pub upstream: usize,
}

/// A route that could not be compiled, or that conflicts with an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// The index of the offending route (the later one, for conflicts).
    pub index: usize,
    pub message: String,
}

/// The compiled, immutable route table.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// In file order; `routes[i].index == i`.
    routes: Vec<Route>,
    /// `methods[i]` is the compiled form of `routes[i].methods`.
    methods: Vec<MethodSet>,
    /// The trie; `nodes[0]` is the root. Empty for `RouteTable::default()`.
    nodes: Vec<Node>,
}

impl RouteTable {
    /// Compiles route specs; reports every bad or conflicting route.
    ///
    /// Errors come in file order; a route can have several (its pattern and
    /// its methods are checked separately, and it can conflict with more than
    /// one earlier route). Conflicts are reported at the later route.
    pub fn build(specs: Vec<RouteSpec>) -> Result<Self, Vec<RouteError>> {
        let mut errors = Vec::new();
        let mut routes: Vec<Route> = Vec::with_capacity(specs.len());
        let mut methods = Vec::with_capacity(specs.len());
        let mut patterns = Vec::with_capacity(specs.len());
        // Canonical pattern -> earlier valid routes with that pattern.
        let mut seen: HashMap<Vec<Segment>, Vec<usize>> = HashMap::new();

        for (index, spec) in specs.into_iter().enumerate() {
            let pattern = parse_pattern(&spec.path);
            let method_set = parse_methods(spec.methods.as_deref());
            if let Err(message) = &pattern {
                errors.push(RouteError {
                    index,
                    message: message.clone(),
                });
            }
            if let Err(messages) = &method_set {
                errors.extend(messages.iter().map(|message| RouteError {
                    index,
                    message: message.clone(),
                }));
            }
            if let (Ok(segments), Ok(set)) = (&pattern, &method_set) {
                let earlier = seen.entry(segments.clone()).or_default();
                for &e in earlier.iter() {
                    if let Some(overlap) = set.overlap(&methods[e]) {
                        errors.push(RouteError {
                            index,
                            message: format!(
                                "route conflicts with route #{} ({}): same pattern, {overlap}",
                                e + 1,
                                routes[e].pattern,
                            ),
                        });
                    }
                }
                earlier.push(index);
            }
            patterns.push(pattern.unwrap_or_default());
            methods.push(method_set.unwrap_or(MethodSet::Any));
            routes.push(Route {
                index,
                pattern: spec.path.into(),
                methods: spec
                    .methods
                    .map(|m| m.into_iter().map(Into::into).collect()),
                requirement: spec.requirement,
                upstream: spec.upstream,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut nodes = vec![Node::default()];
        for (index, segments) in patterns.iter().enumerate() {
            let mut node = 0;
            let mut glob = false;
            for segment in segments {
                node = match segment {
                    Segment::Literal(lit) => match nodes[node].literals.get(lit) {
                        Some(&child) => child,
                        None => {
                            let child = push_node(&mut nodes);
                            nodes[node].literals.insert(lit.clone(), child);
                            nodes[node].longest_literal =
                                nodes[node].longest_literal.max(lit.len());
                            child
                        }
                    },
                    Segment::Param => match nodes[node].param {
                        Some(child) => child,
                        None => {
                            let child = push_node(&mut nodes);
                            nodes[node].param = Some(child);
                            child
                        }
                    },
                    Segment::Glob => {
                        glob = true;
                        node
                    }
                };
            }
            let list = if glob {
                &mut nodes[node].glob
            } else {
                &mut nodes[node].terminal
            };
            list.push(index);
        }
        for node in &mut nodes {
            // Method-naming routes first; they never overlap each other.
            node.terminal.sort_by_key(|&i| methods[i].is_any());
            node.glob.sort_by_key(|&i| methods[i].is_any());
        }
        Ok(RouteTable {
            routes,
            methods,
            nodes,
        })
    }

    /// The most specific route matching `method` and the normalized `path`.
    ///
    /// A trailing slash on `path` does not change the answer. `None` means
    /// no route matches (-> 404), also for a path not starting with `/`.
    pub fn lookup(&self, method: &str, path: &str) -> Option<&Route> {
        let rest = path.strip_prefix('/')?;
        if self.nodes.is_empty() {
            return None;
        }
        let method = Method::new(method);
        self.search(0, rest, &method).map(|i| &self.routes[i])
    }

    /// All routes, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Depth-first search below `node` for the path remainder `rest` (the
    /// part after a `/`; empty when the path is exhausted).
    fn search(&self, node: usize, rest: &str, method: &Method<'_>) -> Option<usize> {
        let n = &self.nodes[node];
        if rest.is_empty() {
            if let Some(found) = self.first_allowing(&n.terminal, method) {
                return Some(found);
            }
        } else {
            let (segment, tail) = rest.split_once('/').unwrap_or((rest, ""));
            if let Some(child) = n.literal_child(segment) {
                if let Some(found) = self.search(child, tail, method) {
                    return Some(found);
                }
            }
            if let (Some(child), false) = (n.param, segment.is_empty()) {
                if let Some(found) = self.search(child, tail, method) {
                    return Some(found);
                }
            }
        }
        self.first_allowing(&n.glob, method)
    }

    fn first_allowing(&self, candidates: &[usize], method: &Method<'_>) -> Option<usize> {
        candidates
            .iter()
            .copied()
            .find(|&i| self.methods[i].allows(method))
    }
}

fn push_node(nodes: &mut Vec<Node>) -> usize {
    nodes.push(Node::default());
    nodes.len() - 1
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Keyed by the percent-decoded literal (see [`Node::literal_child`]).
    literals: HashMap<Box<[u8]>, usize, BuildHasherDefault<Fnv1a>>,
    /// The length of the longest key in `literals`.
    longest_literal: usize,
    param: Option<usize>,
    terminal: Vec<usize>,
    glob: Vec<usize>,
}

/// Segments whose decoded form fits here are matched without a heap allocation.
const DECODE_BUFFER: usize = 256;

impl Node {
    /// The literal child for a path segment, comparing percent-decoded bytes:
    /// the contract keeps escapes of reserved and non-ASCII characters
    /// (`%3A`, `%C3%A9`), but an upstream that decodes its path sees `:` and
    /// `é`, so the literal `/users/@me` must match `/users/%40me` too (else
    /// the request would fall through to a laxer route).
    fn literal_child(&self, segment: &str) -> Option<usize> {
        let raw = segment.as_bytes();
        if !raw.contains(&b'%') {
            return self.literals.get(raw).copied();
        }
        let len = percent_decoded(raw).count();
        if len > self.longest_literal {
            return None;
        }
        if len <= DECODE_BUFFER {
            let mut buffer = [0u8; DECODE_BUFFER];
            for (slot, b) in buffer.iter_mut().zip(percent_decoded(raw)) {
                *slot = b;
            }
            return self.literals.get(&buffer[..len]).copied();
        }
        // Only for configs with literals longer than the buffer.
        self.literals
            .iter()
            .find(|(key, _)| key.len() == len && percent_decoded(raw).eq(key.iter().copied()))
            .map(|(_, &child)| child)
    }
}

/// The bytes of `s` with `%XX` escapes decoded (anything else, including a
/// malformed escape, passes through as it is).
fn percent_decoded(s: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *s.get(i)?;
        if b == b'%' {
            let hi = s.get(i + 1).copied().and_then(hex_value);
            let lo = s.get(i + 2).copied().and_then(hex_value);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                i += 3;
                return Some(hi << 4 | lo);
            }
        }
        i += 1;
        Some(b)
    })
}

/// FNV-1a: fast for short keys. Hash flooding is not a concern: the keys are
/// the config's literals, and a request only ever looks one up.
#[derive(Debug, Clone, Copy)]
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One segment of a validated pattern. Parameter names are dropped: they do
/// not matter for matching or for conflicts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    /// Percent-decoded, so `/a:b` and `/a%3Ab` are the same pattern.
    Literal(Box<[u8]>),
    Param,
    Glob,
}

/// Validates a pattern into its segments (a trailing slash is dropped).
fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    let Some(body) = pattern.strip_prefix('/') else {
        return Err(format!("path pattern `{pattern}` must start with `/`"));
    };
    if pattern.contains("//") {
        return Err(format!(
            "path pattern `{pattern}` has an empty segment (`//`)"
        ));
    }
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut segments = Vec::new();
    let mut params: Vec<&str> = Vec::new();
    let parts: Vec<&str> = body.split('/').collect();
    for (i, &part) in parts.iter().enumerate() {
        let is_last = i + 1 == parts.len();
        let segment = if part.is_empty() {
            return Err(format!(
                "path pattern `{pattern}` has an empty segment (`//`)"
            ));
        } else if part == "**" {
            if !is_last {
                return Err(format!(
                    "path pattern `{pattern}`: `**` is only allowed as the last segment"
                ));
            }
            Segment::Glob
        } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if name.is_empty() {
                return Err(format!(
                    "path pattern `{pattern}`: parameter `{{}}` needs a name"
                ));
            }
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "path pattern `{pattern}`: parameter name `{name}` may only hold A-Z, a-z, 0-9 and _"
                ));
            }
            if params.contains(&name) {
                return Err(format!(
                    "path pattern `{pattern}`: parameter `{{{name}}}` appears twice"
                ));
            }
            params.push(name);
            Segment::Param
        } else if part.contains(['{', '}']) {
            return Err(format!(
                "path pattern `{pattern}`: `{{name}}` must be a whole segment, found `{part}`"
            ));
        } else if part.contains('*') {
            return Err(format!(
                "path pattern `{pattern}`: `*` is only allowed as a whole last segment `**`, found `{part}`"
            ));
        } else {
            let as_path = format!("/{part}");
            match normalize(&as_path) {
                Ok(n) if *n == *as_path => {}
                Ok(n) => {
                    return Err(format!(
                        "path pattern `{pattern}`: segment `{part}` is not in normalized form (it normalizes to `{n}`)"
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "path pattern `{pattern}`: segment `{part}` can never match: {e}"
                    ))
                }
            }
            Segment::Literal(percent_decoded(part.as_bytes()).collect())
        };
        segments.push(segment);
    }
    Ok(segments)
}

/// The standard methods, each with its bit in [`MethodSet::Listed`].
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
const GET: u16 = 1 << 0;
const HEAD: u16 = 1 << 1;

fn standard_bit(method: &str) -> Option<u16> {
    STANDARD_METHODS
        .iter()
        .position(|m| *m == method)
        .map(|i| 1 << i)
}

/// A request method, classified once per lookup.
#[derive(Debug)]
struct Method<'a> {
    bit: Option<u16>,
    name: &'a str,
}

impl<'a> Method<'a> {
    fn new(name: &'a str) -> Self {
        Method {
            bit: standard_bit(name),
            name,
        }
    }
}

/// The compiled `methods` of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MethodSet {
    /// `methods` omitted.
    Any,
    /// Standard methods as bits (`GET` sets `HEAD` too), extension methods by name.
    Listed {
        bits: u16,
        extension: Box<[Box<str>]>,
    },
}

impl MethodSet {
    fn is_any(&self) -> bool {
        matches!(self, MethodSet::Any)
    }

    fn allows(&self, method: &Method<'_>) -> bool {
        match self {
            MethodSet::Any => true,
            MethodSet::Listed { bits, extension } => match method.bit {
                Some(bit) => bits & bit != 0,
                None => extension.iter().any(|e| **e == *method.name),
            },
        }
    }

    /// For two routes with equal patterns: `Some(description)` when their
    /// methods overlap. A route naming methods and one omitting them do not
    /// conflict (the naming one is more specific).
    fn overlap(&self, other: &MethodSet) -> Option<String> {
        match (self, other) {
            (MethodSet::Any, MethodSet::Any) => Some("both allow every method".to_owned()),
            (MethodSet::Any, _) | (_, MethodSet::Any) => None,
            (
                MethodSet::Listed { bits, extension },
                MethodSet::Listed {
                    bits: other_bits,
                    extension: other_extension,
                },
            ) => {
                let mut common = bits & other_bits;
                if common & GET != 0 {
                    common &= !HEAD; // implied by GET; name it once
                }
                let names: Vec<&str> = STANDARD_METHODS
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| common & (1 << i) != 0)
                    .map(|(_, m)| *m)
                    .chain(
                        extension
                            .iter()
                            .filter(|e| other_extension.contains(e))
                            .map(|e| &**e),
                    )
                    .collect();
                (!names.is_empty()).then(|| format!("overlapping methods {}", names.join(", ")))
            }
        }
    }
}

/// Validates `methods`, collecting every problem.
fn parse_methods(methods: Option<&[String]>) -> Result<MethodSet, Vec<String>> {
    let Some(methods) = methods else {
        return Ok(MethodSet::Any);
    };
    if methods.is_empty() {
        return Err(vec![
            "`methods` is empty, so the route could never match; omit it to allow every method"
                .to_owned(),
        ]);
    }
    let mut errors = Vec::new();
    let mut bits = 0;
    let mut extension: Vec<Box<str>> = Vec::new();
    for (i, method) in methods.iter().enumerate() {
        if method.is_empty() {
            errors.push("empty method name".to_owned());
        } else if !method.bytes().all(is_tchar) {
            errors.push(format!(
                "method `{method}` is not a valid HTTP method token"
            ));
        } else if method.bytes().any(|b| b.is_ascii_lowercase()) {
            errors.push(format!(
                "method `{method}` must be upper case (methods are case-sensitive)"
            ));
        } else if methods[..i].contains(method) {
            errors.push(format!("method `{method}` is listed twice"));
        } else if let Some(bit) = standard_bit(method) {
            bits |= bit;
            if bit == GET {
                bits |= HEAD;
            }
        } else {
            extension.push(method.as_str().into());
        }
    }
    if errors.is_empty() {
        Ok(MethodSet::Listed {
            bits,
            extension: extension.into(),
        })
    } else {
        Err(errors)
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec from one line: `"GET,POST /api/x"`, `"[] /x"` (empty list) or
    /// `"/api/**"` (every method).
    fn spec(line: &str) -> RouteSpec {
        let (methods, path) = match line.rsplit_once(' ') {
            None => (None, line),
            Some(("[]", path)) => (Some(Vec::new()), path),
            Some((methods, path)) => (Some(methods.split(',').map(str::to_owned).collect()), path),
        };
        RouteSpec {
            path: path.to_owned(),
            methods,
            requirement: Requirement::AnyToken,
            upstream: 0,
        }
    }

    fn build(lines: &[&str]) -> Result<RouteTable, Vec<RouteError>> {
        RouteTable::build(lines.iter().map(|l| spec(l)).collect())
    }

    /// Builds the table in file order and in reverse order, and checks that
    /// each `(method, path)` gets the route at the expected position of
    /// `lines` (`None`: no route) both times.
    fn check(lines: &[&str], cases: &[(&str, &str, Option<usize>)]) {
        let forward = build(lines).expect("table builds");
        let mut reversed_lines = lines.to_vec();
        reversed_lines.reverse();
        let reversed = build(&reversed_lines).expect("reversed table builds");
        let n = lines.len();
        for &(method, path, expected) in cases {
            let got = forward.lookup(method, path).map(|r| r.index);
            assert_eq!(
                got.map(|i| lines[i]),
                expected.map(|i| lines[i]),
                "{method} {path}"
            );
            let got = reversed.lookup(method, path).map(|r| n - 1 - r.index);
            assert_eq!(
                got.map(|i| lines[i]),
                expected.map(|i| lines[i]),
                "{method} {path} (routes in reverse order)"
            );
        }
    }

    /// Checks that building `lines` fails with exactly these `(index, message)` errors.
    fn check_errors(lines: &[&str], expected: &[(usize, &str)]) {
        let errors = build(lines).expect_err("table must not build");
        let got: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.index, e.message.as_str()))
            .collect();
        assert_eq!(got, expected, "errors for {lines:?}");
    }

    #[test]
    fn literal_routes_match_exactly() {
        check(
            &["/healthz", "/api/messages", "/"],
            &[
                ("GET", "/healthz", Some(0)),
                ("GET", "/api/messages", Some(1)),
                ("GET", "/", Some(2)),
                ("GET", "/api", None),
                ("GET", "/api/messages/1", None),
                ("GET", "/healthzz", None),
                ("GET", "/Healthz", None),
                ("GET", "/api/Messages", None),
                ("GET", "", None),
                ("GET", "healthz", None),
            ],
        );
    }

    #[test]
    fn params_match_one_non_empty_segment() {
        check(
            &["/api/messages/{id}", "/users/{user}/posts/{post_id}"],
            &[
                ("GET", "/api/messages/42", Some(0)),
                ("GET", "/api/messages/%C3%A9", Some(0)),
                ("GET", "/api/messages/42/", Some(0)),
                ("GET", "/api/messages", None),
                ("GET", "/api/messages/", None),
                ("GET", "/api/messages/42/x", None),
                // Not normalized, but still no empty parameter.
                ("GET", "/api/messages//", None),
                ("GET", "/users//posts/p1", None),
                ("GET", "/users/u1/posts/p1", Some(1)),
                ("GET", "/users/u1/posts", None),
                ("GET", "/users/u1/comments/p1", None),
            ],
        );
    }

    #[test]
    fn glob_matches_its_prefix_and_everything_below() {
        check(
            &["/api/**", "/**"],
            &[
                ("GET", "/api", Some(0)),
                ("GET", "/api/", Some(0)),
                ("GET", "/api/a", Some(0)),
                ("GET", "/api/a/b/c", Some(0)),
                ("GET", "/apix", Some(1)),
                ("GET", "/", Some(1)),
                ("GET", "/other/x", Some(1)),
            ],
        );
        check(
            &["/api/**"],
            &[
                ("GET", "/", None),
                ("GET", "/ap", None),
                ("GET", "/x/api", None),
            ],
        );
    }

    #[test]
    fn trailing_slash_does_not_change_the_match() {
        check(
            &["/api/messages", "/api/items/", "/a/{x}/"],
            &[
                ("GET", "/api/messages/", Some(0)),
                ("GET", "/api/messages", Some(0)),
                ("GET", "/api/items", Some(1)),
                ("GET", "/api/items/", Some(1)),
                ("GET", "/a/1", Some(2)),
                ("GET", "/a/1/", Some(2)),
            ],
        );
    }

    #[test]
    fn most_specific_wins_regardless_of_order() {
        check(
            &[
                "/**",
                "/api/**",
                "/api/{section}/**",
                "/api/messages/**",
                "/api/messages",
                "/api/messages/{id}",
                "/api/messages/latest",
                "/api/{section}/latest",
                "/api/{section}",
            ],
            &[
                ("GET", "/x", Some(0)),
                ("GET", "/api", Some(1)),
                ("GET", "/api/", Some(1)),
                ("GET", "/api/orders", Some(8)),
                ("GET", "/api/orders/latest", Some(7)),
                ("GET", "/api/orders/1", Some(2)),
                ("GET", "/api/orders/1/2", Some(2)),
                ("GET", "/api/messages", Some(4)),
                ("GET", "/api/messages/7", Some(5)),
                ("GET", "/api/messages/latest", Some(6)),
                ("GET", "/api/messages/7/edit", Some(3)),
            ],
        );
    }

    #[test]
    fn literal_beats_param_even_when_deeper_glob_would_match() {
        // Compared from the left: `/a/b/**` (literal, literal, glob) beats
        // `/a/{x}/c` (literal, param, literal) for `/a/b/c`.
        check(
            &["/a/{x}/c", "/a/b/**"],
            &[
                ("GET", "/a/b/c", Some(1)),
                ("GET", "/a/z/c", Some(0)),
                ("GET", "/a/z/d", None),
            ],
        );
    }

    #[test]
    fn backtracks_out_of_a_literal_subtree() {
        check(
            &["/a/b/c", "/a/{x}/d", "/a/**"],
            &[
                ("GET", "/a/b/d", Some(1)),
                ("GET", "/a/b/c", Some(0)),
                ("GET", "/a/b/e", Some(2)),
                ("GET", "/a/b", Some(2)),
            ],
        );
    }

    #[test]
    fn exact_route_beats_glob_on_its_prefix() {
        check(
            &["/a/**", "/a"],
            &[
                ("GET", "/a", Some(1)),
                ("GET", "/a/", Some(1)),
                ("GET", "/a/b", Some(0)),
            ],
        );
        check(
            &["/**", "/"],
            &[("GET", "/", Some(1)), ("GET", "/x", Some(0))],
        );
    }

    #[test]
    fn get_covers_head_but_not_the_reverse() {
        check(
            &["GET /get", "HEAD /head", "GET,HEAD /both"],
            &[
                ("GET", "/get", Some(0)),
                ("HEAD", "/get", Some(0)),
                ("POST", "/get", None),
                ("HEAD", "/head", Some(1)),
                ("GET", "/head", None),
                ("GET", "/both", Some(2)),
                ("HEAD", "/both", Some(2)),
            ],
        );
    }

    #[test]
    fn methods_are_case_sensitive_and_extension_methods_work() {
        check(
            &["GET,PURGE /cache", "/any"],
            &[
                ("PURGE", "/cache", Some(0)),
                ("GET", "/cache", Some(0)),
                ("get", "/cache", None),
                ("purge", "/cache", None),
                ("BREW", "/cache", None),
                ("BREW", "/any", Some(1)),
                ("get", "/any", Some(1)),
            ],
        );
    }

    #[test]
    fn falls_back_to_a_less_specific_route_that_allows_the_method() {
        check(
            &[
                "GET /api/messages",
                "/api/**",
                "PUT,DELETE /api/messages/{id}",
            ],
            &[
                ("GET", "/api/messages", Some(0)),
                ("HEAD", "/api/messages", Some(0)),
                ("POST", "/api/messages", Some(1)),
                ("PUT", "/api/messages/1", Some(2)),
                ("GET", "/api/messages/1", Some(1)),
            ],
        );
        check(
            &["GET /a/b", "POST /a/{x}", "DELETE /a/**"],
            &[
                ("GET", "/a/b", Some(0)),
                ("POST", "/a/b", Some(1)),
                ("DELETE", "/a/b", Some(2)),
                ("PUT", "/a/b", None),
            ],
        );
    }

    #[test]
    fn equal_patterns_prefer_the_route_naming_methods() {
        check(
            &[
                "/api/messages",
                "GET /api/messages",
                "POST /api/{x}",
                "/api/{y}",
            ],
            &[
                ("GET", "/api/messages", Some(1)),
                ("HEAD", "/api/messages", Some(1)),
                ("POST", "/api/messages", Some(0)),
                ("POST", "/api/other", Some(2)),
                ("PUT", "/api/other", Some(3)),
            ],
        );
        check(
            &["/x/**", "DELETE /x/**"],
            &[("DELETE", "/x/1", Some(1)), ("GET", "/x/1", Some(0))],
        );
    }

    #[test]
    fn literals_match_escaped_and_raw_spellings_alike() {
        // An upstream that decodes its path sees `@`, `:` and `é` either way,
        // so the strict literal route must win, not the catch-all.
        check(
            &["/users/@me", "/v1/a:b", "/caf%C3%A9/x", "/100%25", "/**"],
            &[
                ("GET", "/users/@me", Some(0)),
                ("GET", "/users/%40me", Some(0)),
                ("GET", "/v1/a:b", Some(1)),
                ("GET", "/v1/a%3Ab", Some(1)),
                ("GET", "/v1/a%3A%62", Some(1)),
                ("GET", "/caf%C3%A9/x", Some(2)),
                ("GET", "/caf\u{e9}/x", Some(2)),
                ("GET", "/100%25", Some(3)),
                // Different characters stay different.
                ("GET", "/users/%41me", Some(4)),
                ("GET", "/v1/a%3Bb", Some(4)),
                ("GET", "/100%2525", Some(4)),
                ("GET", "/100", Some(4)),
                ("GET", "/users/%40m", Some(4)),
                ("GET", "/users/%40mee", Some(4)),
            ],
        );
    }

    #[test]
    fn literals_longer_than_the_decode_buffer_still_match() {
        let long = "x".repeat(DECODE_BUFFER + 10);
        let pattern = format!("/{long}:y");
        check(
            &[&pattern, "/**"],
            &[
                ("GET", &pattern, Some(0)),
                ("GET", &format!("/{long}%3Ay"), Some(0)),
                ("GET", &format!("/{long}%3Az"), Some(1)),
                ("GET", &format!("/{long}%3Ayy"), Some(1)),
            ],
        );
    }

    #[test]
    fn empty_table_matches_nothing() {
        let table = RouteTable::build(Vec::new()).expect("builds");
        assert!(table.lookup("GET", "/").is_none());
        assert!(table.routes().is_empty());
        assert!(RouteTable::default().lookup("GET", "/").is_none());
    }

    #[test]
    fn build_keeps_routes_in_file_order_as_written() {
        let mut specs = vec![spec("GET,POST /a/{id}/"), spec("/b/**")];
        specs[1].requirement = Requirement::Public;
        specs[1].upstream = 3;
        let table = RouteTable::build(specs).expect("builds");
        let routes = table.routes();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].index, 0);
        assert_eq!(&*routes[0].pattern, "/a/{id}/");
        let methods: Vec<&str> = routes[0]
            .methods
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|m| &**m)
            .collect();
        assert_eq!(methods, ["GET", "POST"]);
        assert_eq!(routes[1].index, 1);
        assert!(routes[1].methods.is_none());
        assert_eq!(routes[1].requirement, Requirement::Public);
        assert_eq!(routes[1].upstream, 3);
        assert_eq!(table.lookup("GET", "/b/x").map(|r| r.upstream), Some(3));
    }

    #[test]
    fn conflicts_are_reported_at_the_later_route() {
        check_errors(
            &["/healthz", "GET /api/messages", "GET /api/messages"],
            &[(
                2,
                "route conflicts with route #2 (/api/messages): same pattern, overlapping methods GET",
            )],
        );
        check_errors(
            &["/a/{x}", "/a/{y}/"],
            &[(
                1,
                "route conflicts with route #1 (/a/{x}): same pattern, both allow every method",
            )],
        );
        check_errors(
            &["/users/@me", "/users/%40me"],
            &[(
                1,
                "route conflicts with route #1 (/users/@me): same pattern, both allow every method",
            )],
        );
        check_errors(
            &["GET /a", "HEAD /a"],
            &[(
                1,
                "route conflicts with route #1 (/a): same pattern, overlapping methods HEAD",
            )],
        );
        check_errors(
            &["GET,POST,PURGE /a/**", "DELETE /a/**", "HEAD,PURGE,POST /a/**"],
            &[(
                2,
                "route conflicts with route #1 (/a/**): same pattern, overlapping methods HEAD, POST, PURGE",
            )],
        );
        check_errors(
            &["GET /a", "POST /a", "GET,POST /a/"],
            &[
                (
                    2,
                    "route conflicts with route #1 (/a): same pattern, overlapping methods GET",
                ),
                (
                    2,
                    "route conflicts with route #2 (/a): same pattern, overlapping methods POST",
                ),
            ],
        );
    }

    #[test]
    fn non_overlapping_equal_patterns_are_not_conflicts() {
        check(
            &["GET /a/{x}", "POST /a/{y}", "/a/{z}", "HEAD /b", "POST /b"],
            &[
                ("GET", "/a/1", Some(0)),
                ("POST", "/a/1", Some(1)),
                ("PATCH", "/a/1", Some(2)),
                ("HEAD", "/b", Some(3)),
                ("POST", "/b", Some(4)),
                ("GET", "/b", None),
            ],
        );
        // `/a` and `/a/**` are different patterns, even though both match `/a`.
        check(&["/a", "/a/**"], &[("GET", "/a", Some(0))]);
    }

    #[test]
    fn bad_patterns_are_reported_with_their_index() {
        check_errors(
            &[
                "/ok",
                "api/x",
                "",
                "/a//b",
                "//",
                "/a/**/b",
                "/a/{}",
                "/a/{id-x}",
                "/a/{x}/{x}",
                "/a/x{id}",
                "/a/{id",
                "/a/b*",
                "/a/*",
                "/a/***",
                "/a/%41",
                "/a/%3a",
                "/a/./b",
                "/a/..",
                "/a/%2F",
                "/a;b",
                "/a\\b",
            ],
            &[
                (1, "path pattern `api/x` must start with `/`"),
                (2, "path pattern `` must start with `/`"),
                (3, "path pattern `/a//b` has an empty segment (`//`)"),
                (4, "path pattern `//` has an empty segment (`//`)"),
                (5, "path pattern `/a/**/b`: `**` is only allowed as the last segment"),
                (6, "path pattern `/a/{}`: parameter `{}` needs a name"),
                (7, "path pattern `/a/{id-x}`: parameter name `id-x` may only hold A-Z, a-z, 0-9 and _"),
                (8, "path pattern `/a/{x}/{x}`: parameter `{x}` appears twice"),
                (9, "path pattern `/a/x{id}`: `{name}` must be a whole segment, found `x{id}`"),
                (10, "path pattern `/a/{id`: `{name}` must be a whole segment, found `{id`"),
                (11, "path pattern `/a/b*`: `*` is only allowed as a whole last segment `**`, found `b*`"),
                (12, "path pattern `/a/*`: `*` is only allowed as a whole last segment `**`, found `*`"),
                (13, "path pattern `/a/***`: `*` is only allowed as a whole last segment `**`, found `***`"),
                (14, "path pattern `/a/%41`: segment `%41` is not in normalized form (it normalizes to `/A`)"),
                (15, "path pattern `/a/%3a`: segment `%3a` is not in normalized form (it normalizes to `/%3A`)"),
                (16, "path pattern `/a/./b`: segment `.` is not in normalized form (it normalizes to `/`)"),
                (17, "path pattern `/a/..`: segment `..` can never match: path climbs above the root"),
                (18, "path pattern `/a/%2F`: segment `%2F` can never match: encoded slash in path"),
                (19, "path pattern `/a;b`: segment `a;b` can never match: semicolon in path"),
                (20, "path pattern `/a\\b`: segment `a\\b` can never match: backslash in path"),
            ],
        );
    }

    #[test]
    fn bad_methods_are_reported_each() {
        check_errors(
            &["GET /ok", "get /a", "G T /b", "GET,GET /c", "[] /d", "GET,pOST,BAD\"X /e"],
            &[
                (1, "method `get` must be upper case (methods are case-sensitive)"),
                (2, "method `G T` is not a valid HTTP method token"),
                (3, "method `GET` is listed twice"),
                (4, "`methods` is empty, so the route could never match; omit it to allow every method"),
                (5, "method `pOST` must be upper case (methods are case-sensitive)"),
                (5, "method `BAD\"X` is not a valid HTTP method token"),
            ],
        );
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        check_errors(
            &["/a//", "get /b", "/c", "/c"],
            &[
                (0, "path pattern `/a//` has an empty segment (`//`)"),
                (
                    1,
                    "method `get` must be upper case (methods are case-sensitive)",
                ),
                (
                    3,
                    "route conflicts with route #3 (/c): same pattern, both allow every method",
                ),
            ],
        );
        // A pattern error and a method error on the same route.
        check_errors(
            &["get /a/**/b"],
            &[
                (
                    0,
                    "path pattern `/a/**/b`: `**` is only allowed as the last segment",
                ),
                (
                    0,
                    "method `get` must be upper case (methods are case-sensitive)",
                ),
            ],
        );
    }

    #[test]
    fn large_tables_still_pick_the_most_specific_route() {
        let mut lines: Vec<String> = (0..2000).map(|i| format!("/svc{i}/items/{{id}}")).collect();
        lines.push("/**".to_owned());
        lines.push("GET /svc7/items/special".to_owned());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        check(
            &refs,
            &[
                ("GET", "/svc1999/items/5", Some(1999)),
                ("GET", "/svc7/items/special", Some(2001)),
                ("POST", "/svc7/items/special", Some(7)),
                ("GET", "/svc2000/items/5", Some(2000)),
                ("GET", "/svc3/items", Some(2000)),
            ],
        );
    }
}
