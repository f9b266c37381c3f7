//! One module per `calltap` subcommand.

pub mod import_csv;
pub mod replay;
pub mod run;
pub mod token;
