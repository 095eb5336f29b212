//! `scopegate test CASES.yaml`: route test cases run against the compiled
//! table, offline. A case names a request (method, path, the token's scopes
//! or claims, or no token) and the expected outcome (`allow`, `400`, `401`,
//! `403`, `404`), optionally the route pattern that must decide it.

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::config::Config;
use crate::explain::{decide, Outcome};

/// One case as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    /// Optional label, shown in the report.
    name: Option<String>,
    method: String,
    path: String,
    /// The token's scopes: a list or a space-separated string. Omit both
    /// `scopes` and `claims` for a request without a token.
    scopes: Option<Scopes>,
    /// A claims map; its `scope` (string) or `scp` (list) gives the scopes.
    claims: Option<serde_yaml::Mapping>,
    /// `allow`, `400`, `401`, `403` or `404`.
    expect: serde_yaml::Value,
    /// The pattern of the route that must match, e.g. `/api/messages/{id}`.
    route: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scopes {
    List(Vec<String>),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CaseFile {
    Wrapped { cases: Vec<RawCase> },
    List(Vec<RawCase>),
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub label: String,
    pub failure: Option<String>,
}

/// All results of one run.
#[derive(Debug)]
pub struct Report {
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn all_passed(&self) -> bool {
        self.results.iter().all(|r| r.failure.is_none())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            match &r.failure {
                None => {
                    let _ = writeln!(out, "ok    {}", r.label);
                }
                Some(why) => {
                    let _ = writeln!(out, "FAIL  {}\n      {why}", r.label);
                }
            }
        }
        let failed = self.results.iter().filter(|r| r.failure.is_some()).count();
        let _ = writeln!(
            out,
            "{} passed, {} failed",
            self.results.len() - failed,
            failed
        );
        out
    }
}

fn expected_code(value: &serde_yaml::Value) -> Option<&'static str> {
    let text = match value {
        serde_yaml::Value::String(s) => s.to_ascii_lowercase(),
        serde_yaml::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    ["allow", "400", "401", "403", "404"]
        .into_iter()
        .find(|c| *c == text)
}

fn scopes_of(case: &RawCase) -> Option<Vec<String>> {
    if let Some(scopes) = &case.scopes {
        return Some(match scopes {
            Scopes::List(l) => l.clone(),
            Scopes::Text(t) => t.split_ascii_whitespace().map(str::to_owned).collect(),
        });
    }
    let claims = case.claims.as_ref()?;
    let get = |k: &str| claims.get(serde_yaml::Value::String(k.into()));
    Some(match (get("scope"), get("scp")) {
        (Some(serde_yaml::Value::String(s)), _) => {
            s.split_ascii_whitespace().map(str::to_owned).collect()
        }
        (_, Some(serde_yaml::Value::Sequence(items))) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        (_, Some(serde_yaml::Value::String(s))) => {
            s.split_ascii_whitespace().map(str::to_owned).collect()
        }
        _ => Vec::new(),
    })
}

/// Runs the cases in `text` (from `file`, for messages) against `config`.
/// Errors are `FILE:LINE:COL: message` lines.
pub fn run(config: &Config, text: &str, file: &Path) -> Result<Report, Vec<String>> {
    let parsed: CaseFile = serde_yaml::from_str(text).map_err(|e| {
        let (line, col) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        vec![format!("{}:{line}:{col}: {e}", file.display())]
    })?;
    let cases = match parsed {
        CaseFile::Wrapped { cases } | CaseFile::List(cases) => cases,
    };
    let mut errors = Vec::new();
    let mut results = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let Some(expected) = expected_code(&case.expect) else {
            errors.push(format!(
                "{}: case #{}: expect must be one of allow, 400, 401, 403, 404",
                file.display(),
                i + 1
            ));
            continue;
        };
        let scopes = scopes_of(case);
        let (outcome, route) = decide(config, &case.method, &case.path, scopes.as_deref());
        let token = match &scopes {
            None => "no token".to_string(),
            Some(s) => format!("scopes [{}]", s.join(" ")),
        };
        let label = match &case.name {
            Some(n) => format!("{n}: {} {} ({token})", case.method, case.path),
            None => format!("{} {} ({token})", case.method, case.path),
        };
        let mut failure = None;
        if outcome.code() != expected {
            let detail = match &outcome {
                Outcome::BadPath(why) => format!(" ({why})"),
                _ => String::new(),
            };
            failure = Some(format!(
                "expected {expected}, got {}{detail}; matched route: {}",
                outcome.code(),
                route.map_or("none".to_string(), |r| r.pattern.to_string())
            ));
        } else if let Some(want) = &case.route {
            let got = route.map(|r| &*r.pattern);
            if got != Some(want.as_str()) {
                failure = Some(format!(
                    "expected route {want}, got {}",
                    got.unwrap_or("none")
                ));
            }
        }
        results.push(CaseResult { label, failure });
    }
    if errors.is_empty() {
        Ok(Report { results })
    } else {
        Err(errors)
    }
}
