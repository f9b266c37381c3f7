//! `[recording]`: what happens to a call no rule matches.

use super::RuleAction;
use crate::settings::{ConfigError, Key, Kind, Section, Values};

/// `[recording]`.
pub const RECORDING: Section = Section {
    name: "recording",
    help: "",
    keys: &[
        Key {
            name: "default",
            kind: Kind::Choice(&["record", "skip", "on_demand"]),
            default: "record",
            live: true,
            help: "What happens to a call that no recording rule matches: record (from its first packet), skip\n\
                  (no file at all; the CDR is still written, with recording_mode \"skip\") or on_demand (no audio\n\
                  until an operator starts it: POST /api/v1/calls/{uuid}/recording {\"action\":\"start\"}).\n\
                  The rules themselves (by number pattern, IP/CIDR, domain; first match by priority wins) are in\n\
                  the CDR database, managed through /api/v1/rules. A reload applies this key to the calls that\n\
                  start after it.",
        },
    ],
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordingConfig {
    /// `[recording] default`: what happens to a call no recording rule matches.
    pub default: RuleAction,
}

impl RecordingConfig {
    pub fn from_values(v: &Values) -> Result<RecordingConfig, ConfigError> {
        let (mode, _) = v.get("recording", "default");
        let default = RuleAction::parse(mode.trim())
            .ok_or_else(|| v.bad("recording", "default", mode, "record, skip or on_demand"))?;
        Ok(RecordingConfig { default })
    }
}
