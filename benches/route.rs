//! Benchmarks for `scopegate::route`: lookup cost against table size (the
//! target: 10,000 routes cost at most 2x 10 routes), and normalization.
//!
//! Run with `cargo bench --bench route`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use scopegate::route::{normalize, Requirement, RouteSpec, RouteTable};

/// A table of `n` routes shaped like a real config: per service a list
/// route, an item route with a parameter, an action route, and a glob;
/// plus a catch-all.
fn table(n: usize) -> RouteTable {
    let mut specs = Vec::with_capacity(n);
    let spec = |path: String, methods: Option<&[&str]>| RouteSpec {
        path,
        methods: methods.map(|m| m.iter().map(|s| (*s).to_owned()).collect()),
        requirement: Requirement::AnyToken,
        upstream: 0,
    };
    specs.push(spec("/**".to_owned(), None));
    let mut service = 0;
    while specs.len() < n {
        let routes = [
            spec(format!("/svc{service}/v1/items"), Some(&["GET", "POST"])),
            spec(
                format!("/svc{service}/v1/items/{{id}}"),
                Some(&["GET", "PUT", "DELETE"]),
            ),
            spec(
                format!("/svc{service}/v1/items/{{id}}/archive"),
                Some(&["POST"]),
            ),
            spec(format!("/svc{service}/**"), None),
        ];
        specs.extend(routes.into_iter().take(n - specs.len()));
        service += 1;
    }
    RouteTable::build(specs).expect("bench table builds")
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for n in [10, 1_000, 10_000] {
        let table = table(n);
        // The last complete service in the table.
        let last = n.saturating_sub(1) / 4 - 1;
        let cases = [
            ("param", "GET", format!("/svc{last}/v1/items/12345")),
            (
                "deep_literal",
                "POST",
                format!("/svc{last}/v1/items/12345/archive"),
            ),
            (
                "method_fallback",
                "PATCH",
                format!("/svc{last}/v1/items/12345"),
            ),
            ("catch_all", "GET", "/unknown/path/below".to_owned()),
        ];
        for (name, method, path) in &cases {
            assert!(table.lookup(method, path).is_some(), "{method} {path}");
            group.bench_with_input(BenchmarkId::new(*name, n), path, |b, path| {
                b.iter(|| table.lookup(black_box(method), black_box(path)))
            });
        }
    }
    group.finish();
}

fn normalization(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize");
    let cases = [
        ("already_normal", "/api/v1/messages/12345/attachments"),
        ("escapes_kept", "/api/v1/search/caf%C3%A9%20au%20lait"),
        ("rewritten", "/api//v1/./messages/%61bc/../12345/"),
        ("rejected", "/api/v1/messages/..%2Fadmin"),
    ];
    for (name, path) in cases {
        group.bench_function(name, |b| b.iter(|| normalize(black_box(path))));
    }
    group.finish();
}

criterion_group!(benches, lookup, normalization);
criterion_main!(benches);
