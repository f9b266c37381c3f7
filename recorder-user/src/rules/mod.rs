//! Recording rules: which calls are recorded, skipped, or recorded only when an operator asks.
//!
//! Rules live in the database (`recording_rules`, managed through `/api/v1/rules`); the daemon
//! keeps a compiled snapshot ([`RuleSet`]) in a [`LiveRules`] that the signalling worker reads
//! once per new call (SIP rate, never per RTP packet) and that the API replaces after every
//! change. Compiling up front (patterns lowercased into bytes, CIDRs into masks) keeps a
//! decision to a few comparisons per rule and free of allocation.
//!
//! Matching: every condition a rule sets must hold (AND); unset conditions match anything. The
//! enabled rule with the lowest `priority` (then lowest `id`) that matches wins; when none does,
//! the configured default (`[recording] default`) applies.
//!
//! Number patterns are *globs* over the whole SIP user part (From for the caller, To for the
//! callee), case-insensitive: `*` is any run of characters (also none), `?` exactly one, any
//! other character itself. A prefix is written `1234*`; a pattern without wildcards matches
//! that exact user. A party without a user part matches no pattern. The domain condition is the
//! same kind of glob over the host part of From or To (either side matches). IP conditions take
//! an address or a CIDR (`10.0.0.0/8`, `2001:db8::/32`); IPv4-mapped IPv6 addresses of a party
//! are compared as IPv4.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use calltap_sip::NameAddr;
use serde::{Deserialize, Serialize};

pub use self::config::{RecordingConfig, RECORDING};

mod config;

/// Longest pattern or domain accepted: far above any real number or host name, it bounds the
/// matcher's work per call.
pub const MAX_PATTERN: usize = 128;
/// Longest rule name accepted.
pub const MAX_NAME: usize = 200;
/// Highest priority accepted (lowest is 0).
pub const MAX_PRIORITY: i64 = i32::MAX as i64;

/// What happens to a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Recorded from the first packet (CallTap's behaviour without rules).
    #[default]
    Record,
    /// Never recorded: no file at all; the CDR is still written.
    Skip,
    /// No audio until an operator starts the recording (`POST /calls/{uuid}/recording`).
    OnDemand,
}

impl RuleAction {
    pub fn parse(s: &str) -> Option<RuleAction> {
        match s {
            "record" => Some(RuleAction::Record),
            "skip" => Some(RuleAction::Skip),
            "on_demand" => Some(RuleAction::OnDemand),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Record => "record",
            RuleAction::Skip => "skip",
            RuleAction::OnDemand => "on_demand",
        }
    }
}

/// The recording decision for one call: the action and the rule that chose it (`None`: the
/// default applied).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingMode {
    #[serde(rename = "recording_mode")]
    pub action: RuleAction,
    pub rule_id: Option<i64>,
}

/// A rule's match conditions, as stored and as the API takes them. All optional, ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Conditions {
    /// Glob over the caller's (From) user part.
    pub caller: Option<String>,
    /// Glob over the callee's (To) user part.
    pub callee: Option<String>,
    /// Glob over either party's user part.
    pub party: Option<String>,
    /// Address or CIDR of the caller (source of the INVITE).
    pub caller_ip: Option<String>,
    /// Address or CIDR of the callee.
    pub callee_ip: Option<String>,
    /// Address or CIDR of either party.
    pub ip: Option<String>,
    /// Glob over the host part of From or To.
    pub domain: Option<String>,
}

/// A stored rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: i64,
    pub name: String,
    pub priority: i64,
    pub enabled: bool,
    pub action: RuleAction,
    #[serde(rename = "match")]
    pub conditions: Conditions,
}

/// Why a rule cannot be used; `field` names the offending request field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RuleError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RuleError {
    RuleError {
        field,
        reason: reason.into(),
    }
}

/// A glob compiled for matching: lowercased bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Glob(Box<[u8]>);

impl Glob {
    fn compile(field: &'static str, p: &str) -> Result<Glob, RuleError> {
        if p.is_empty() {
            return Err(invalid(field, "empty pattern"));
        }
        if p.len() > MAX_PATTERN {
            return Err(invalid(field, format!("longer than {MAX_PATTERN} bytes")));
        }
        if p.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid(
                field,
                "whitespace or control characters in pattern",
            ));
        }
        Ok(Glob(p.as_bytes().to_ascii_lowercase().into_boxed_slice()))
    }

    /// Whole-string glob match, ASCII case-insensitive, without allocating: the classic
    /// two-pointer walk that backtracks only to the last `*` (linear in practice, bounded by
    /// `MAX_PATTERN` times the input).
    fn matches(&self, s: &str) -> bool {
        let (p, s) = (&self.0[..], s.as_bytes());
        let (mut pi, mut si) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, si));
                    pi += 1;
                }
                Some(&c) if c == b'?' || c == s[si].to_ascii_lowercase() => {
                    pi += 1;
                    si += 1;
                }
                _ => match star {
                    Some((sp, ss)) => {
                        pi = sp + 1;
                        si = ss + 1;
                        star = Some((sp, ss + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }

    fn matches_opt(&self, s: Option<&str>) -> bool {
        s.is_some_and(|s| self.matches(s))
    }
}

/// An address block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cidr {
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

impl Cidr {
    fn parse(field: &'static str, s: &str) -> Result<Cidr, RuleError> {
        let bad = |why: &str| invalid(field, format!("{s:?}: {why}"));
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("expected an IP address or CIDR (a.b.c.d/n, x:y::/n)"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u32 = match prefix {
            None => max,
            Some(p) => p
                .parse()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| bad(&format!("prefix length must be 0..={max}")))?,
        };
        Ok(match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                Cidr::V4 {
                    net: u32::from(a) & mask,
                    mask,
                }
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                Cidr::V6 {
                    net: u128::from(a) & mask,
                    mask,
                }
            }
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip.to_canonical()) {
            (Cidr::V4 { net, mask }, IpAddr::V4(a)) => u32::from(a) & mask == *net,
            (Cidr::V6 { net, mask }, IpAddr::V6(a)) => u128::from(a) & mask == *net,
            _ => false,
        }
    }
}

/// A rule ready for matching.
#[derive(Clone, Debug)]
struct Compiled {
    id: i64,
    action: RuleAction,
    caller: Option<Glob>,
    callee: Option<Glob>,
    party: Option<Glob>,
    caller_ip: Option<Cidr>,
    callee_ip: Option<Cidr>,
    ip: Option<Cidr>,
    domain: Option<Glob>,
}

/// What a rule is matched against.
#[derive(Clone, Copy, Debug)]
pub struct CallFacts<'a> {
    pub from: &'a NameAddr,
    pub to: &'a NameAddr,
    pub caller_ip: IpAddr,
    pub callee_ip: IpAddr,
}

impl Compiled {
    fn matches(&self, f: &CallFacts<'_>) -> bool {
        let (from_user, to_user) = (f.from.user.as_deref(), f.to.user.as_deref());
        self.caller
            .as_ref()
            .is_none_or(|g| g.matches_opt(from_user))
            && self.callee.as_ref().is_none_or(|g| g.matches_opt(to_user))
            && self
                .party
                .as_ref()
                .is_none_or(|g| g.matches_opt(from_user) || g.matches_opt(to_user))
            && self.caller_ip.is_none_or(|c| c.contains(f.caller_ip))
            && self.callee_ip.is_none_or(|c| c.contains(f.callee_ip))
            && self
                .ip
                .is_none_or(|c| c.contains(f.caller_ip) || c.contains(f.callee_ip))
            && self.domain.as_ref().is_none_or(|g| {
                g.matches_opt(f.from.host.as_deref()) || g.matches_opt(f.to.host.as_deref())
            })
    }
}

/// Checks a rule's fields (what the API and the store accept); `Ok` means it compiles.
pub fn validate(name: &str, priority: i64, conditions: &Conditions) -> Result<(), RuleError> {
    if name.trim().is_empty() {
        return Err(invalid("name", "empty"));
    }
    if name.len() > MAX_NAME || name.contains('\0') {
        return Err(invalid("name", format!("at most {MAX_NAME} bytes, no NUL")));
    }
    if !(0..=MAX_PRIORITY).contains(&priority) {
        return Err(invalid("priority", format!("must be 0..={MAX_PRIORITY}")));
    }
    compile_conditions(0, RuleAction::Record, conditions).map(drop)
}

fn compile_conditions(id: i64, action: RuleAction, c: &Conditions) -> Result<Compiled, RuleError> {
    let glob =
        |field, p: &Option<String>| p.as_deref().map(|p| Glob::compile(field, p)).transpose();
    let cidr = |field, p: &Option<String>| p.as_deref().map(|p| Cidr::parse(field, p)).transpose();
    Ok(Compiled {
        id,
        action,
        caller: glob("match.caller", &c.caller)?,
        callee: glob("match.callee", &c.callee)?,
        party: glob("match.party", &c.party)?,
        caller_ip: cidr("match.caller_ip", &c.caller_ip)?,
        callee_ip: cidr("match.callee_ip", &c.callee_ip)?,
        ip: cidr("match.ip", &c.ip)?,
        domain: glob("match.domain", &c.domain)?,
    })
}

/// The compiled, ordered, enabled rules and the default.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    rules: Vec<Compiled>,
    default: RuleAction,
}

impl RuleSet {
    /// Compiles `rules` (disabled ones dropped, the rest ordered by priority then id). A rule
    /// that does not compile (a row written by hand into the database) is left out and logged:
    /// one bad row must not stop the others from applying.
    pub fn new(rules: &[Rule], default: RuleAction) -> RuleSet {
        let mut sorted: Vec<&Rule> = rules.iter().filter(|r| r.enabled).collect();
        sorted.sort_by_key(|r| (r.priority, r.id));
        let rules = sorted
            .into_iter()
            .filter_map(
                |r| match compile_conditions(r.id, r.action, &r.conditions) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        log::error!("recording rule {} ({:?}) ignored: {e}", r.id, r.name);
                        None
                    }
                },
            )
            .collect();
        RuleSet { rules, default }
    }

    /// Only the default: what applies before the rules are loaded.
    pub fn default_only(default: RuleAction) -> RuleSet {
        RuleSet {
            rules: Vec::new(),
            default,
        }
    }

    pub fn default_action(&self) -> RuleAction {
        self.default
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The decision for a call: the first matching rule's action, else the default.
    pub fn decide(&self, facts: &CallFacts<'_>) -> RecordingMode {
        self.rules.iter().find(|r| r.matches(facts)).map_or(
            RecordingMode {
                action: self.default,
                rule_id: None,
            },
            |r| RecordingMode {
                action: r.action,
                rule_id: Some(r.id),
            },
        )
    }
}

/// The rule set in force, shared by the signalling worker (reads it once per new call) and
/// the API and the loader in `calltap run` (replace it whole). Readers clone the inner `Arc`
/// and drop the lock at once, so a replacement never waits for a decision and vice versa.
///
/// Replacements come from reads of the database that may finish in any order (the start-up
/// loader, one per API change): each takes a [`LiveRules::ticket`] before it reads, and a set
/// read earlier than the one in force is dropped, so a slow read never brings back rules a
/// later change replaced.
#[derive(Debug)]
pub struct LiveRules {
    live: RwLock<Live>,
    tickets: AtomicU64,
}

#[derive(Debug)]
struct Live {
    set: Arc<RuleSet>,
    /// Ticket of the read the set came from (0: none yet).
    ticket: u64,
}

impl LiveRules {
    pub fn new(set: RuleSet) -> Arc<LiveRules> {
        Arc::new(LiveRules {
            live: RwLock::new(Live {
                set: Arc::new(set),
                ticket: 0,
            }),
            tickets: AtomicU64::new(0),
        })
    }

    pub fn get(&self) -> Arc<RuleSet> {
        // A panic while holding the lock can only have happened around a whole-value swap.
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .set
            .clone()
    }

    /// Taken before reading the rules from the database; see [`LiveRules::replace_from`].
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Replaces the rules (keeping the default) with `rules`, read after `ticket` was taken,
    /// unless a read that started later is in force already. Whether they were put in force.
    pub fn replace_from(&self, ticket: u64, rules: &[Rule]) -> bool {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        if ticket <= live.ticket {
            return false;
        }
        live.set = Arc::new(RuleSet::new(rules, live.set.default));
        live.ticket = ticket;
        true
    }

    /// Replaces the rules, keeping the default: rules known to be the newest.
    pub fn replace(&self, rules: &[Rule]) {
        self.replace_from(self.ticket(), rules);
    }

    /// Changes the default (configuration reload), keeping the rules.
    pub fn set_default(&self, default: RuleAction) {
        let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (*live.set).clone();
        next.default = default;
        live.set = Arc::new(next);
    }

    /// The decision for a new call under the current rules.
    pub fn decide(&self, facts: &CallFacts<'_>) -> RecordingMode {
        self.get().decide(facts)
    }
}

#[cfg(test)]
mod tests;
