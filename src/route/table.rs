//! The compiled route table: pattern and method validation, conflict
//! detection, and the segment trie that [`RouteTable::lookup`] searches.
//!
//! # The trie
//!
//! Each node stands for a sequence of pattern segments; its children are the
//! literal segments (a hash map), at most one `{param}` child (parameter names
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

use super::normalize::normalize;

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
        let mut routes = Vec::with_capacity(specs.len());
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
                                routes_pattern(&routes, e),
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
            if let Some(&child) = n.literals.get(segment) {
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

fn routes_pattern(routes: &[Route], index: usize) -> &str {
    &routes[index].pattern
}

fn push_node(nodes: &mut Vec<Node>) -> usize {
    nodes.push(Node::default());
    nodes.len() - 1
}

#[derive(Debug, Clone, Default)]
struct Node {
    literals: HashMap<Box<str>, usize, BuildHasherDefault<Fnv1a>>,
    param: Option<usize>,
    terminal: Vec<usize>,
    glob: Vec<usize>,
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
    Literal(Box<str>),
    Param,
    Glob,
}

/// Validates a pattern into its segments (a trailing slash is dropped).
fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    let Some(body) = pattern.strip_prefix('/') else {
        return Err(format!("path pattern `{pattern}` must start with `/`"));
    };
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
            Segment::Literal(part.into())
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
