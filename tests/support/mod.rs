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

/// An address where connects are refused, and the socket that keeps it so:
/// bound, never listening. A port freed by dropping a listener could be
/// taken by a test running alongside (even by the gateway's own listener);
/// this one stays reserved while the socket lives.
pub fn refusing_addr() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bound to a loopback port");
    let addr = socket.local_addr().expect("its address");
    (socket, addr)
}
