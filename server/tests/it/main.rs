//! Integration tests of dap-server: one test binary (to keep link time down), real server on
//! port 0, real sockets.

#[macro_use]
mod common;

mod artifacts;
mod auth;
mod cluster;
mod concurrency;
mod crash;
mod dispatch;
mod fault_proxy;
mod faults;
mod flow;
mod leases;
mod limits;
mod metrics;
mod openapi;
mod store_contract;
mod timeouts;
mod tls;
mod webhooks;
