//! scopegate: a reverse-proxy authorization gateway.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod route;
