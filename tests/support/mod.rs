//! Integration-test support: real loopback peers for the gateway — an IdP
//! (discovery, JWKS, introspection), a recording upstream, a raw HTTP/1.1
//! client, and runtime-generated keys that sign real tokens.
#![allow(dead_code, unused_imports, unreachable_pub)]

pub mod client;
pub mod idp;
pub mod keys;
mod serve;
pub mod upstream;

pub use client::{build_request, get, raw_request, raw_request_timeout, RawConn, RawResponse};
pub use idp::Idp;
pub use keys::{alg_none_token, hs256_confusion_token, valid_claims, Alg, TestKey, TokenBuilder};
pub use upstream::{RecordedRequest, Upstream};
