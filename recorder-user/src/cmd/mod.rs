//! One module per `calltap` subcommand.

pub mod replay;
pub mod run;
