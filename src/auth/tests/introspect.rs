//! Introspection (RFC 7662) against a loopback endpoint.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;

use super::support::*;
use crate::auth::{AuthError, ClientAuthMethod, IntrospectionSettings, Verifier};

const TOKEN: &str = "2YotnFZFEjr1zCsicMWpAA";

fn introspection(idp: &Idp, method: ClientAuthMethod) -> IntrospectionSettings {
    IntrospectionSettings {
        endpoint: idp.url("/introspect").parse().unwrap(),
        client_id: "scope gate".into(),
        client_secret: "p@ss:w/rd".into(),
        auth_method: method,
        issuer: Some("https://idp.example".into()),
        audiences: Some(vec!["orders-api".into()]),
        cache_ttl: Duration::from_secs(60),
    }
}

async fn setup(method: ClientAuthMethod) -> (Idp, Arc<Verifier>) {
    let idp = Idp::start().await;
    let mut s = settings(&idp);
    s.idp_timeout = Duration::from_millis(500);
    s.introspection = Some(introspection(&idp, method));
    (idp.clone(), Verifier::new(s).unwrap())
}

fn active() -> serde_json::Value {
    json!({
        "active": true,
        "scope": "orders:read orders:write",
        "sub": "carol",
        "client_id": "web",
        "exp": now() + 600,
        "iss": "https://idp.example",
        "aud": "orders-api",
    })
}

fn unavailable(r: &Result<Arc<crate::auth::Principal>, AuthError>) -> bool {
    matches!(r, Err(AuthError::Unavailable { retry_after, .. }) if *retry_after >= Duration::from_secs(1))
}

#[tokio::test]
async fn basic_auth_request_and_cached_answer() {
    let (idp, v) = setup(ClientAuthMethod::ClientSecretBasic).await;
    idp.set("/introspect", Reply::json(active()));
    let p = v.verify(TOKEN).await.unwrap();
    assert_eq!(p.subject.as_deref(), Some("carol"));
    assert!(p.has_scope("orders:read") && p.has_scope("orders:write"));
    assert_eq!(p.claims.get("client_id"), Some(json!("web")));
    let seen = idp.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.path, "/introspect");
    assert_eq!(
        req.body,
        format!("token={TOKEN}&token_type_hint=access_token")
    );
    let auth = req
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .unwrap();
    let expected = STANDARD.encode("scope+gate:p%40ss%3Aw%2Frd");
    assert_eq!(auth.1, format!("Basic {expected}"));
    let ct = req
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .unwrap();
    assert_eq!(ct.1, "application/x-www-form-urlencoded");

    let again = v.verify(TOKEN).await.unwrap();
    assert!(Arc::ptr_eq(&p, &again));
    assert_eq!(idp.hits("/introspect"), 1, "served from the cache");
    assert_eq!(v.metrics().token_cache_hits, 1);
}

#[tokio::test]
async fn client_secret_post_sends_credentials_in_the_body() {
    let (idp, v) = setup(ClientAuthMethod::ClientSecretPost).await;
    idp.set("/introspect", Reply::json(active()));
    v.verify(TOKEN).await.unwrap();
    let req = &idp.seen()[0];
    assert_eq!(
        req.body,
        format!("token={TOKEN}&token_type_hint=access_token&client_id=scope+gate&client_secret=p%40ss%3Aw%2Frd")
    );
    assert!(!req.headers.iter().any(|(k, _)| k == "authorization"));
}

#[tokio::test]
async fn answers_that_rule_the_token_out() {
    let now = now() as i64;
    let cases = [
        ("inactive", json!({"active": false}), "token inactive"),
        ("expired", json!({"exp": now - 1}), "token expired"),
        (
            "wrong iss",
            json!({"iss": "https://evil.example"}),
            "unknown issuer",
        ),
        ("wrong aud", json!({"aud": ["billing"]}), "wrong audience"),
    ];
    for (name, patch, why) in cases {
        let (idp, v) = setup(ClientAuthMethod::ClientSecretBasic).await;
        let answer = if name == "inactive" {
            patch
        } else {
            with(&active(), patch)
        };
        idp.set("/introspect", Reply::json(answer));
        assert_eq!(
            v.verify(TOKEN).await.map(|_| ()),
            Err(AuthError::InvalidToken(why)),
            "{name}"
        );
        // Remembered briefly: no second request.
        assert_eq!(
            v.verify(TOKEN).await.map(|_| ()),
            Err(AuthError::InvalidToken(why)),
            "{name}"
        );
        assert_eq!(idp.hits("/introspect"), 1, "{name}");
    }
}

#[tokio::test]
async fn iss_and_aud_are_checked_only_when_both_sides_have_them() {
    let cases = [
        json!({"iss": null, "aud": null}),
        json!({"aud": ["billing", "orders-api"]}),
    ];
    for patch in cases {
        let (idp, v) = setup(ClientAuthMethod::ClientSecretBasic).await;
        idp.set("/introspect", Reply::json(with(&active(), patch.clone())));
        assert!(v.verify(TOKEN).await.is_ok(), "{patch}");
    }
    // Not configured on our side: anything goes.
    let idp = Idp::start().await;
    let mut s = settings(&idp);
    let mut i = introspection(&idp, ClientAuthMethod::ClientSecretBasic);
    i.issuer = None;
    i.audiences = None;
    s.introspection = Some(i);
    let v = Verifier::new(s).unwrap();
    idp.set(
        "/introspect",
        Reply::json(with(&active(), json!({"iss": "x", "aud": "y"}))),
    );
    assert!(v.verify(TOKEN).await.is_ok());
}

/// Endpoint trouble is 503 and nothing is cached.
#[tokio::test]
async fn endpoint_trouble_is_unavailable_and_not_cached() {
    let slow = Reply {
        delay: Duration::from_secs(2),
        ..Reply::json(active())
    };
    let cases = [
        ("our credentials rejected", Reply::status(401)),
        ("server error", Reply::status(500)),
        ("not json", Reply::raw("active=true")),
        ("json array", Reply::raw("[true]")),
        ("no active", Reply::json(json!({"scope": "a"}))),
        ("active as string", Reply::json(json!({"active": "true"}))),
        (
            "exp as string",
            Reply::json(with(&active(), json!({"exp": "soon"}))),
        ),
        ("slow", slow),
    ];
    for (name, reply) in cases {
        let (idp, v) = setup(ClientAuthMethod::ClientSecretBasic).await;
        idp.set("/introspect", reply);
        let r = v.verify(TOKEN).await;
        assert!(unavailable(&r), "{name}: {r:?}");
        idp.set("/introspect", Reply::json(active()));
        assert!(
            v.verify(TOKEN).await.is_ok(),
            "{name}: the failure was not cached"
        );
        assert_eq!(idp.hits("/introspect"), 2, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_one_token_share_one_request() {
    let (idp, v) = setup(ClientAuthMethod::ClientSecretBasic).await;
    idp.set("/introspect", Reply::json(active()));
    let gate = idp.close_gate();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let v = Arc::clone(&v);
            tokio::spawn(async move { v.verify(TOKEN).await.map(|p| p.subject.clone()) })
        })
        .collect();
    idp.arrived().await;
    // Nothing to await for "no second request": give the others a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(idp.hits("/introspect"), 1);
    gate.add_permits(100);
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(Some("carol".into())));
    }
    assert_eq!(idp.hits("/introspect"), 1);
}

#[tokio::test]
async fn jwt_shaped_tokens_never_go_to_introspection() {
    let (idp, v) = setup(ClientAuthMethod::ClientSecretBasic).await;
    idp.set("/introspect", Reply::json(active()));
    assert!(v.verify("a.b.c").await.is_err());
    assert_eq!(idp.hits("/introspect"), 0);
}

#[test]
fn the_secret_is_not_in_debug_output() {
    let s = IntrospectionSettings {
        endpoint: "https://idp.example/introspect".parse().unwrap(),
        client_id: "id".into(),
        client_secret: "hunter2-secret".into(),
        auth_method: ClientAuthMethod::ClientSecretBasic,
        issuer: None,
        audiences: None,
        cache_ttl: Duration::from_secs(60),
    };
    assert!(!format!("{s:?}").contains("hunter2"));
}
