//! What CallTap offers to other systems while it runs: the REST API and, beside it on the same
//! HTTP server, metrics.

pub mod api;
pub mod config;
pub mod console;
pub mod http;
pub mod live;
pub mod metrics;
pub mod tls;
pub mod webhook;
