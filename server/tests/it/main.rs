//! Integration tests of dap-server: one test binary (to keep link time down), real server on
//! port 0, real sockets.

mod common;

mod artifacts;
mod auth;
mod crash;
mod dispatch;
mod flow;
mod leases;
mod metrics;
mod openapi;
mod tls;
mod webhooks;
