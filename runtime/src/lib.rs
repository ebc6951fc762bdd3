//! The weir host runtime: pipeline configuration, sources, Debezium decoding into Arrow
//! change batches, sinks with checkpoints, dead letters and the pipeline runner.
//!
//! Data flows one way: source → decode → transform plugins → sink → checkpoint. Each
//! stage has one home: `source`, `decode`, `plugin`, `sink`; `envelope` is the contract
//! between them.

pub mod bench;
pub mod config;
pub mod conflict;
pub mod connect;
pub mod dead_letter;
pub mod decode;
pub mod encode;
pub mod envelope;
pub mod fault;
pub mod kafka;
pub mod lifecycle;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod position;
pub mod postgres_client;
pub mod redact;
pub mod server;
pub mod sink;
pub mod source;
pub mod tables;
