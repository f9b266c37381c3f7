//! The `calltap` binary: command-line parsing and error reporting; the work is in the library.

use std::{path::PathBuf, process::ExitCode};

use calltap::{
    capture::config::SourceKind,
    cmd::{import_csv, replay, run, token},
    config::Config,
    settings::Kind,
};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "calltap", version, about = "Passive SIP/RTP call recorder")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Source {
    Auto,
    Xdp,
    #[value(name = "af_packet", alias = "af-packet")]
    AfPacket,
}

#[derive(clap::Args)]
struct Common {
    /// INI configuration file (every key can also come from CALLTAP_<SECTION>_<KEY>).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where CallTap writes everything: recordings, CDR journal, state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Capture live from mirror-port interfaces and record every call.
    Run {
        #[command(flatten)]
        common: Common,
        /// Capture interface (repeatable).
        #[arg(long = "interface", short = 'i')]
        interfaces: Vec<String>,
        /// Capture source; auto tries XDP and falls back to AF_PACKET.
        #[arg(long, value_enum)]
        source: Option<Source>,
        /// Media workers (default: one per CPU).
        #[arg(long)]
        workers: Option<u32>,
    },
    /// Record the calls in pcap/pcapng files through the same pipeline as live capture.
    Replay {
        #[command(flatten)]
        common: Common,
        /// Print one JSON line per finished call (the CDR) on stdout.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Store CSV CDR journals (cdr-journal.csv and its rotated copies) in the CDR database.
    /// Idempotent: calls already stored are counted, never duplicated.
    ImportCsv {
        #[command(flatten)]
        common: Common,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// REST API bearer tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Validate the configuration and exit.
    CheckConfig {
        #[command(flatten)]
        common: Common,
        /// Also list every key: its value, type, default and whether a reload applies it.
        #[arg(long)]
        keys: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TokenRole {
    /// Reads status, CDRs and recordings.
    Viewer,
    /// A viewer that may also control recording of live calls.
    Operator,
    /// An operator that may also manage tokens and configuration.
    Admin,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token and print it (the only time it is shown; only its hash is stored).
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum)]
        role: TokenRole,
        /// Who or what the token is for (shown in `GET /api/v1/tokens`).
        #[arg(long, default_value = "")]
        name: String,
        /// Refuse the token after this long: a number and m, h, d or w (e.g. 30d). Default:
        /// never expires.
        #[arg(long, value_parser = parse_expires_in)]
        expires_in: Option<std::time::Duration>,
    },
    /// List tokens: id, role, created, expires, revoked, state, name (never the token).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a token by id; it is refused from its next request on.
    Revoke {
        #[command(flatten)]
        common: Common,
        /// The token's id (`calltap token list`).
        id: i64,
    },
}

fn parse_expires_in(s: &str) -> Result<std::time::Duration, String> {
    calltap::publish::api::auth::parse_expires_in(s).map_err(|e| e.to_string())
}

fn load(common: &Common) -> anyhow::Result<Config> {
    let mut cfg = Config::load(common.config.as_deref())?;
    if let Some(d) = &common.data_dir {
        cfg.storage.data_dir = d.clone();
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("calltap: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            common,
            interfaces,
            source,
            workers,
        } => {
            // The command line wins over file and environment, at start and on every reload.
            let mut cli_keys = Vec::new();
            if common.data_dir.is_some() {
                cli_keys.push(("storage", "data_dir"));
            }
            if !interfaces.is_empty() {
                cli_keys.push(("capture", "interfaces"));
            }
            if source.is_some() {
                cli_keys.push(("capture", "source"));
            }
            if workers.is_some() {
                cli_keys.push(("capture", "workers"));
            }
            let data_dir = common.data_dir.clone();
            let overrides = move |cfg: &mut Config| {
                if let Some(d) = &data_dir {
                    cfg.storage.data_dir = d.clone();
                }
                if !interfaces.is_empty() {
                    cfg.capture.interfaces = interfaces.clone();
                }
                if let Some(s) = source {
                    cfg.capture.source = match s {
                        Source::Auto => SourceKind::Auto,
                        Source::Xdp => SourceKind::Xdp,
                        Source::AfPacket => SourceKind::AfPacket,
                    };
                }
                if let Some(w) = workers {
                    cfg.capture.workers = w.clamp(1, calltap_common::MAX_WORKERS);
                }
            };
            let env: Vec<(String, String)> = std::env::vars().collect();
            let (mut cfg, running) = Config::resolve(common.config.as_deref(), &env)?;
            overrides(&mut cfg);
            let reload = calltap::daemon::control::ReloadSource {
                file: common.config.clone(),
                running,
                cli_keys,
                overrides: Box::new(overrides),
            };
            run::run(cfg, Some(reload))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            common,
            json,
            files,
        } => {
            let cfg = load(&common)?;
            Ok(if replay::replay(&cfg, &files, json)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::ImportCsv { common, files } => {
            let cfg = load(&common)?;
            let totals = import_csv::import_csv(&cfg, &files)?;
            println!(
                "{} files, {} rows: {} imported, {} already present, {} bad",
                totals.files, totals.rows, totals.imported, totals.already_present, totals.bad
            );
            Ok(if totals.bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Token {
            action: TokenAction::List { common },
        } => {
            let cfg = load(&common)?;
            let tokens = token::list(&cfg)?;
            print!(
                "{}",
                token::render_list(&tokens, calltap::clock::unix_ns_i64())
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            action: TokenAction::Revoke { common, id },
        } => {
            let cfg = load(&common)?;
            if token::revoke(&cfg, id)? {
                eprintln!("calltap: token {id} revoked");
            } else {
                eprintln!("calltap: token {id} was revoked already");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            action:
                TokenAction::Create {
                    common,
                    role,
                    name,
                    expires_in,
                },
        } => {
            let cfg = load(&common)?;
            let role = match role {
                TokenRole::Viewer => calltap::publish::api::auth::Role::Viewer,
                TokenRole::Operator => calltap::publish::api::auth::Role::Operator,
                TokenRole::Admin => calltap::publish::api::auth::Role::Admin,
            };
            let made = token::create(&cfg, role, &name, expires_in)?;
            let expiry = match made.expires_ns {
                Some(ns) => format!(
                    ", expires {}",
                    calltap::store::cdr::rfc3339(u64::try_from(ns).unwrap_or(0))
                ),
                None => String::new(),
            };
            eprintln!(
                "calltap: created {} token {} (id {}{expiry}); it is not shown again",
                role.as_str(),
                if name.is_empty() { "(no name)" } else { &name },
                made.id
            );
            println!("{}", made.token);
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { common, keys } => {
            let cfg = load(&common)?;
            if keys {
                let env: Vec<(String, String)> = std::env::vars().collect();
                let (_, values) = Config::resolve(common.config.as_deref(), &env)?;
                for (section, key) in calltap::config::keys() {
                    let value = match (section.name, key.name) {
                        ("storage", "data_dir") => cfg.storage.data_dir.display().to_string(),
                        (s, k) => values
                            .get(&(s.to_string(), k.to_string()))
                            .cloned()
                            .unwrap_or_default(),
                    };
                    // Secrets are never printed; a database URL without its password.
                    let value = match key.kind {
                        Kind::Secret if !value.is_empty() => "(set)".to_string(),
                        Kind::Url => calltap::store::db::redact(&value),
                        _ => value,
                    };
                    println!(
                        "[{}] {} = {value}  ({}; default {:?}; {})",
                        section.name,
                        key.name,
                        key.kind.name(),
                        key.default,
                        if key.live { "reload" } else { "restart" }
                    );
                }
            }
            if let Some((cert, key)) = &cfg.api.tls {
                calltap::publish::tls::server_config(cert, key)?;
            }
            println!(
                "configuration OK: interfaces [{}], {} media workers, SIP ports {:?}, data dir {}",
                cfg.capture.interfaces.join(","),
                cfg.capture.worker_count(),
                cfg.capture.sip_ports,
                cfg.storage.data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
