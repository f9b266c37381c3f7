//! Where calls end up: WAV recordings and call detail records.

pub mod cdr;
pub mod paths;
pub mod wav;
