//! RS256 / ES256 / EdDSA verify, ring against aws-lc-rs: one signature per
//! algorithm, both crates interleaved in one process, best of 7 rounds.
//! Figures: bench/RESULTS.md (session 7).
use std::time::Instant;

fn time<F: FnMut()>(n: u32, mut f: F) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// One algorithm: a signature, and its public key parsed by each backend.
struct Case {
    name: &'static str,
    iterations: u32,
    signature: Vec<u8>,
    aws: aws_lc_rs::signature::ParsedPublicKey,
    ring: ring::signature::UnparsedPublicKey<Vec<u8>>,
}

impl Case {
    fn new(
        name: &'static str,
        iterations: u32,
        signature: &[u8],
        public: &[u8],
        aws: &'static dyn aws_lc_rs::signature::VerificationAlgorithm,
        ring: &'static dyn ring::signature::VerificationAlgorithm,
    ) -> Self {
        Case {
            name,
            iterations,
            signature: signature.to_vec(),
            aws: aws_lc_rs::signature::ParsedPublicKey::new(aws, public).unwrap(),
            ring: ring::signature::UnparsedPublicKey::new(ring, public.to_vec()),
        }
    }
}

fn main() {
    use aws_lc_rs::signature::{self as aws, KeyPair as _};
    let msg = b"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2JlbmNoLnNjb3BlZ2F0ZS50ZXN0IiwiYXVkIjoiYmVuY2gtYXBpIn0";
    let rng = aws_lc_rs::rand::SystemRandom::new();
    // Keys and signatures from aws-lc-rs, verified by both.
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let mut rsa_sig = vec![0; rsa.public_modulus_len()];
    rsa.sign(&aws::RSA_PKCS1_SHA256, &rng, msg, &mut rsa_sig)
        .unwrap();
    let ec_pkcs8 =
        aws::EcdsaKeyPair::generate_pkcs8(&aws::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec =
        aws::EcdsaKeyPair::from_pkcs8(&aws::ECDSA_P256_SHA256_FIXED_SIGNING, ec_pkcs8.as_ref())
            .unwrap();
    let ed_pkcs8 = aws::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = aws::Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
    let cases = [
        Case::new(
            "RS256",
            3000,
            &rsa_sig,
            rsa.public_key().as_ref(),
            &aws::RSA_PKCS1_2048_8192_SHA256,
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        ),
        Case::new(
            "ES256",
            800,
            ec.sign(&rng, msg).unwrap().as_ref(),
            ec.public_key().as_ref(),
            &aws::ECDSA_P256_SHA256_FIXED,
            &ring::signature::ECDSA_P256_SHA256_FIXED,
        ),
        Case::new(
            "EdDSA",
            1000,
            ed.sign(msg).as_ref(),
            ed.public_key().as_ref(),
            &aws::ED25519,
            &ring::signature::ED25519,
        ),
    ];
    // ring has no parsed public-key type for verification: its figure
    // includes parsing the key, as a ring backend pays on every token.
    let mut best = [[f64::MAX; 2]; 3];
    for _round in 0..7 {
        for (case, best) in cases.iter().zip(&mut best) {
            let sig = &case.signature;
            best[0] = best[0].min(time(case.iterations, || {
                case.aws.verify_sig(msg, sig).unwrap()
            }));
            best[1] = best[1].min(time(case.iterations, || {
                case.ring.verify(msg, sig).unwrap()
            }));
        }
    }
    for (case, [aws_us, ring_us]) in cases.iter().zip(best) {
        println!(
            "{}: aws-lc-rs {aws_us:.1} us ({:.0}/s), ring {ring_us:.1} us ({:.0}/s)",
            case.name,
            1e6 / aws_us,
            1e6 / ring_us
        );
    }
}
