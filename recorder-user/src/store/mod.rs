//! Where calls end up: WAV recordings and call detail records (database, CSV journal, calls.jsonl).

pub mod archive;
pub mod callstore;
pub mod cdr;
pub mod config;
pub mod csv_journal;
pub mod db;
pub mod paths;
pub mod retention;
pub mod rules;
pub mod spool;
pub mod wav;
pub mod writer;
