//! Property tests for the matcher and the normalizer (proptest).
//!
//! - `lookup` picks what a brute-force reference picks: the most specific
//!   matching route per the contract (literal > `{param}` > end > `**`,
//!   left to right; equal patterns: methods named beats omitted).
//! - Most-specific-wins does not depend on file order.
//! - Adding a route never changes the decision for a request it cannot match.
//! - `normalize` is idempotent, and its output is in normal form.

use proptest::prelude::*;

use super::{normalize, Requirement, Route, RouteSpec, RouteTable};

const METHODS: [&str; 4] = ["GET", "HEAD", "POST", "DELETE"];

fn pattern() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec!["a", "b", "@", "%40", "{p}", "{q}"]);
    (
        prop::collection::vec(segment, 0..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(segs, glob, slash)| {
            // Parameter names must differ within one pattern.
            let mut n = 0;
            let mut out: Vec<String> = segs
                .into_iter()
                .map(|s| {
                    if s.starts_with('{') {
                        n += 1;
                        format!("{{p{n}}}")
                    } else {
                        s.to_owned()
                    }
                })
                .collect();
            if glob {
                out.push("**".into());
            }
            let mut p = format!("/{}", out.join("/"));
            if slash && p.len() > 1 {
                p.push('/');
            }
            p
        })
}

fn spec() -> impl Strategy<Value = RouteSpec> {
    let methods = prop::option::of(prop::sample::subsequence(METHODS.to_vec(), 1..3));
    (pattern(), methods).prop_map(|(path, methods)| RouteSpec {
        path,
        methods: methods.map(|m| m.into_iter().map(str::to_owned).collect()),
        requirement: Requirement::AnyToken,
        upstream: 0,
    })
}

fn request() -> impl Strategy<Value = (&'static str, String)> {
    let segment = prop::sample::select(vec!["a", "b", "c", "@", "%40", ""]);
    (
        prop::sample::select(METHODS.to_vec()),
        prop::collection::vec(segment, 0..6),
    )
        .prop_map(|(m, segs)| {
            let raw = format!("/{}", segs.join("/"));
            (m, normalize(&raw).expect("valid").into_owned())
        })
}

/// What identifies a route across tables built in different orders.
fn identity(route: Option<&Route>) -> Option<(String, Option<Vec<String>>)> {
    route.map(|r| {
        (
            r.pattern.to_string(),
            r.methods
                .as_ref()
                .map(|m| m.iter().map(|s| s.to_string()).collect()),
        )
    })
}

mod reference {
    use super::Route;

    fn decode(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                let hex = |c: u8| (c as char).to_digit(16);
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        out
    }

    fn segments(s: &str) -> Vec<&str> {
        let body = s.strip_prefix('/').unwrap_or(s);
        let body = body.strip_suffix('/').unwrap_or(body);
        if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        }
    }

    fn matches(pattern: &str, path: &str) -> bool {
        let pat = segments(pattern);
        let segs = segments(path);
        for (i, p) in pat.iter().enumerate() {
            if *p == "**" {
                return true;
            }
            match segs.get(i) {
                None => return false,
                Some(s) if p.starts_with('{') => {
                    if s.is_empty() {
                        return false;
                    }
                }
                Some(s) if decode(p) != decode(s) => return false,
                Some(_) => {}
            }
        }
        pat.len() == segs.len()
    }

    fn allows(r: &Route, method: &str) -> bool {
        r.methods.as_ref().is_none_or(|list| {
            list.iter()
                .any(|m| &**m == method || (&**m == "GET" && method == "HEAD"))
        })
    }

    /// literal 4 > param 3 > end 2 > glob 1, left to right.
    fn rank(pattern: &str, i: usize) -> u8 {
        match segments(pattern).get(i) {
            None => 2,
            Some(&"**") => 1,
            Some(s) if s.starts_with('{') => 3,
            Some(_) => 4,
        }
    }

    pub(super) fn best<'a>(routes: &'a [Route], method: &str, path: &str) -> Option<&'a Route> {
        let mut best: Option<&Route> = None;
        for r in routes
            .iter()
            .filter(|r| matches(&r.pattern, path) && allows(r, method))
        {
            let Some(b) = best else {
                best = Some(r);
                continue;
            };
            let ord = (0..8)
                .map(|i| rank(&r.pattern, i).cmp(&rank(&b.pattern, i)))
                .find(|o| o.is_ne());
            let better = match ord {
                Some(o) => o.is_gt(),
                None => b.methods.is_none() && r.methods.is_some(),
            };
            if better {
                best = Some(r);
            }
        }
        best
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lookup_agrees_with_the_reference(
        specs in prop::collection::vec(spec(), 1..8),
        requests in prop::collection::vec(request(), 1..16),
    ) {
        let Ok(table) = RouteTable::build(specs) else { return Ok(()) };
        for (method, path) in &requests {
            let got = identity(table.lookup(method, path));
            let want = identity(reference::best(table.routes(), method, path));
            prop_assert_eq!(got, want, "{} {}", method, path);
        }
    }

    #[test]
    fn file_order_does_not_matter(
        (specs, shuffled) in prop::collection::vec(spec(), 1..8)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        requests in prop::collection::vec(request(), 1..16),
    ) {
        let (Ok(a), Ok(b)) = (RouteTable::build(specs), RouteTable::build(shuffled)) else {
            return Ok(());
        };
        for (method, path) in &requests {
            prop_assert_eq!(
                identity(a.lookup(method, path)),
                identity(b.lookup(method, path)),
                "{} {}", method, path
            );
        }
    }

    #[test]
    fn a_new_route_only_changes_requests_it_matches(
        specs in prop::collection::vec(spec(), 0..8),
        extra in spec(),
        requests in prop::collection::vec(request(), 1..16),
    ) {
        let Ok(before) = RouteTable::build(specs.clone()) else { return Ok(()) };
        let Ok(alone) = RouteTable::build(vec![extra.clone()]) else { return Ok(()) };
        let mut with = specs;
        with.push(extra);
        let Ok(after) = RouteTable::build(with) else { return Ok(()) };
        for (method, path) in &requests {
            if alone.lookup(method, path).is_none() {
                prop_assert_eq!(
                    identity(before.lookup(method, path)),
                    identity(after.lookup(method, path)),
                    "{} {}", method, path
                );
            }
        }
    }

    #[test]
    fn normalize_is_idempotent(
        path in "/[a-c./%0-9A-Fa-f~@é]{0,24}",
    ) {
        if let Ok(once) = normalize(&path) {
            let twice = normalize(&once).expect("a normal form is valid");
            prop_assert_eq!(&*twice, &*once);
            prop_assert!(!once.contains("//"), "{}", once);
            prop_assert!(once.split('/').all(|s| s != "." && s != ".."), "{}", once);
            let upper = once.to_ascii_uppercase();
            prop_assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{}", once);
        }
    }
}
