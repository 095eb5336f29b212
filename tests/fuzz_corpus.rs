//! The fuzz targets on a stable toolchain: every committed corpus input,
//! every kept crash (`fuzz/regressions/<target>/`) and a fixed number of
//! deterministic mutants of each go through the same check functions that
//! `cargo fuzz` runs (fuzz/checks.rs). A crash found by the fuzzer is fixed,
//! then its input is copied into `fuzz/regressions/<target>/` and stays a
//! test here.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// Mutants per corpus input (deterministic: the same inputs every run).
const MUTANTS: usize = 40;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("readable corpus file"))
        })
        .collect();
    files.sort();
    files
}

/// xorshift64*: a tiny deterministic generator, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// libFuzzer-style mutations: flip, overwrite with an interesting byte,
/// insert, delete, duplicate a slice, splice with another input.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    const INTERESTING: &[u8] = b"%./\\;#\0\x7f\xff{}*:\"[]=-_ \t\r\n0aAzZ";
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                out.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(8));
                out.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                let piece = out[i..i + n].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, piece);
            }
            _ if !other.is_empty() => {
                let cut = rng.below(out.len() + 1);
                let from = rng.below(other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    out
}

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = inputs(&root.join("corpus").join(target));
    assert!(!corpus.is_empty(), "no corpus for {target}");
    for (name, data) in &corpus {
        let result = std::panic::catch_unwind(|| check(data));
        assert!(result.is_ok(), "{target}: corpus input {name} fails");
    }
    for (name, data) in inputs(&root.join("regressions").join(target)) {
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{target}: regression {name} fails again");
    }
    let mut rng = Rng(0x5c09_e6a7_e000_0001 ^ target.len() as u64);
    for (i, (name, data)) in corpus.iter().enumerate() {
        let other = &corpus[(i + 1) % corpus.len()].1;
        for m in 0..MUTANTS {
            let mutant = mutate(&mut rng, data, other);
            let result = std::panic::catch_unwind(|| check(&mutant));
            assert!(
                result.is_ok(),
                "{target}: mutant {m} of {name} fails: {:?}",
                String::from_utf8_lossy(&mutant)
            );
        }
    }
}

#[test]
fn normalize_match() {
    replay("normalize_match", checks::normalize_match::normalize_match);
}

#[test]
fn bearer() {
    replay("bearer", checks::bearer::bearer);
}

#[test]
fn jwt() {
    replay("jwt", checks::jwt::jwt);
}

#[test]
fn jwks() {
    replay("jwks", checks::jwks::jwks);
}

#[test]
fn introspection() {
    replay("introspection", checks::introspection::introspection);
}

#[test]
fn config() {
    replay("config", checks::config::config);
}

#[test]
fn upstream_response() {
    replay(
        "upstream_response",
        checks::upstream_response::upstream_response,
    );
}

/// The jwt corpus really exercises the accepting path: its real tokens
/// verify, and the attacks in it do not.
#[test]
fn jwt_seeds_cover_acceptance_and_attacks() {
    use checks::jwt::{setup, LEEWAY, NOW};
    let (issuer, keys) = setup();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/jwt");
    for (name, data) in inputs(&dir) {
        let token = String::from_utf8(data).expect("tokens are text");
        let verdict = scopegate::auth::fuzzing::verify_jwt(token.trim(), issuer, keys, LEEWAY, NOW);
        let should_pass = [
            "01-rs256",
            "02-es256",
            "03-eddsa",
            "05-at-jwt",
            "06-aud-array-scp",
            "07-no-kid",
            // Signed by the set's own key: the embedded `jwk` is ignored.
            "11-jwk-embedded",
            "15-exp-float",
            "16-exp-huge",
        ]
        .contains(&name.as_str());
        assert_eq!(verdict.is_ok(), should_pass, "{name}: {verdict:?}");
    }
}
