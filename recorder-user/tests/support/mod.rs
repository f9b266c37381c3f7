//! Shared helpers for the integration tests: frame and call builders (the root/CI gate is
//! `calltap_lab::root::require_root`, the corpus's `calltap_lab::corpus::corpus`).
#![allow(dead_code, reason = "shared by every test binary; each uses a part")]

pub mod calls;
pub mod frames;
