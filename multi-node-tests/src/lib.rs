//! Harness for tests that run ractor_replicated nodes as separate OS processes on
//! 127.0.0.1. The node binary and the tests arrive with the Distributed Data work;
//! the crate exists now so the workspace layout is stable.
