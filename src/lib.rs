//! scopegate: a reverse-proxy authorization gateway.
//!
//! Crate map (see ARCHITECTURE.md for the invariants):
//! - [`config`]: routes.yaml -> validated [`config::Config`]
//! - [`route`]: path normalization and the compiled route table (pure)
//! - [`auth`]: token verification (JWT via JWKS, opaque via introspection) and the scope check
//! - [`proxy`]: the hyper service: normalize -> match -> authorize -> forward
//! - [`error`]: the one place rejections become responses
//! - [`gateway`]: the swappable runtime state; [`app`]: process wiring, reload, signals
//! - [`server`], [`admin`]: listeners; [`drain`]: graceful shutdown of their connections; [`head_timeout`]: `client_header` on HTTP/1; [`workers`]: the data-plane threads; [`metrics`]: Prometheus text
//! - [`memory`]: free heap pages back to the OS once a burst of connections ends
//! - [`explain`], [`route_tests`], [`demo`], [`cli`]: the subcommands
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
mod deadline;
pub mod demo;
pub mod drain;
pub mod error;
pub mod explain;
pub mod forward_auth;
pub mod gateway;
pub mod head_timeout;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod route_tests;
pub mod server;
pub mod tls;
pub mod workers;
