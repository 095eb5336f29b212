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

fn main() {
    let msg = b"eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2JlbmNoLnNjb3BlZ2F0ZS50ZXN0IiwiYXVkIjoiYmVuY2gtYXBpIn0";
    // RSA 2048 with aws-lc-rs, verified by both.
    use aws_lc_rs::signature::KeyPair as _;
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let mut sig = vec![0; rsa.public_modulus_len()];
    rsa.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        msg,
        &mut sig,
    )
    .unwrap();
    let rsa_pub_der = rsa.public_key().as_ref().to_vec();
    let a_rsa = aws_lc_rs::signature::ParsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        &rsa_pub_der,
    )
    .unwrap();
    let r_rsa = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        rsa_pub_der.clone(),
    );
    // P-256
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ec_pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let ec = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_pkcs8.as_ref(),
    )
    .unwrap();
    let ec_sig = ec.sign(&rng, msg).unwrap().as_ref().to_vec();
    let ec_pub = ec.public_key().as_ref().to_vec();
    let a_ec = aws_lc_rs::signature::ParsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &ec_pub,
    )
    .unwrap();
    let r_ec = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        ec_pub.clone(),
    );
    // Ed25519
    let ed_pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let ed = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
    let ed_sig = ed.sign(msg).as_ref().to_vec();
    let ed_pub = ed.public_key().as_ref().to_vec();
    let a_ed = aws_lc_rs::signature::ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, &ed_pub)
        .unwrap();
    let r_ed = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, ed_pub.clone());
    let mut best = [[f64::MAX; 2]; 3];
    for _round in 0..7 {
        best[0][0] = best[0][0].min(time(3000, || a_rsa.verify_sig(msg, &sig).unwrap()));
        best[0][1] = best[0][1].min(time(3000, || r_rsa.verify(msg, &sig).unwrap()));
        best[1][0] = best[1][0].min(time(800, || a_ec.verify_sig(msg, &ec_sig).unwrap()));
        best[1][1] = best[1][1].min(time(800, || r_ec.verify(msg, &ec_sig).unwrap()));
        best[2][0] = best[2][0].min(time(1000, || a_ed.verify_sig(msg, &ed_sig).unwrap()));
        best[2][1] = best[2][1].min(time(1000, || r_ed.verify(msg, &ed_sig).unwrap()));
    }
    for (i, name) in ["RS256", "ES256", "EdDSA"].iter().enumerate() {
        println!(
            "{name}: aws-lc-rs {:.1} us ({:.0}/s), ring {:.1} us ({:.0}/s)",
            best[i][0],
            1e6 / best[i][0],
            best[i][1],
            1e6 / best[i][1]
        );
    }
}
