//! `imagestore trust add|list|remove`: the server's trust store, as
//! `lxc config trust` manages it (client certificates) plus bearer tokens.

use std::path::PathBuf;

use clap::Subcommand;
use imagestore_proto::v1 as pb;
use serde_json::json;

use crate::ctx::Ctx;
use crate::failure::{CliResult, Failure};
use crate::output::{Format, Table, human_time};

#[derive(Subcommand)]
pub enum TrustCommand {
    /// Trust a client: with CERT_FILE, that certificate (PEM); without, a new
    /// bearer token, printed once. `trust add [remote:] [CERT_FILE]`.
    Add {
        /// "remote:" and/or a certificate file.
        args: Vec<String>,
        /// A label for the entry.
        #[arg(long, default_value = "")]
        description: String,
        /// Tokens only: seconds until the token stops working (0: never).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// List trusted certificates and tokens (never the tokens themselves).
    #[command(alias = "ls")]
    List {
        /// "remote:".
        remote: Option<String>,
        /// table, compact, json, yaml or csv.
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Stop trusting an entry: `trust remove [remote:]ID` (the ID `trust list` shows).
    #[command(alias = "rm")]
    Remove {
        /// `[remote:]ID`, as `trust list` shows it.
        entry: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: TrustCommand) -> CliResult {
    match cmd {
        TrustCommand::Add {
            args,
            description,
            ttl,
        } => {
            let (remote, rest) = ctx.config.remote_and_filters(&args)?;
            let client = ctx.client(remote.as_deref()).await?;
            match rest.as_slice() {
                [] => {
                    let created = client
                        .trust()
                        .create_token(pb::CreateTokenRequest {
                            description,
                            ttl_seconds: ttl,
                        })
                        .await?
                        .into_inner();
                    ctx.say("Token created; it is shown only this once:");
                    println!("{}", created.token);
                }
                [file] => {
                    let pem = std::fs::read_to_string(PathBuf::from(file))
                        .map_err(|e| Failure::usage(format!("{file}: {e}")))?;
                    let entry = client
                        .trust()
                        .add_certificate(pb::AddCertificateRequest {
                            certificate_pem: pem,
                            description,
                        })
                        .await?
                        .into_inner();
                    ctx.say(format!(
                        "Certificate trusted: {} ({})",
                        id(&entry.name),
                        entry.fingerprint
                    ));
                }
                _ => return Err(Failure::usage("trust add takes at most one CERT_FILE")),
            }
            Ok(())
        }
        TrustCommand::List { remote, format } => {
            let remote = remote.map(|r| r.trim_end_matches(':').to_owned());
            let client = ctx.client(remote.as_deref()).await?;
            let entries = client
                .trust()
                .list_trust(pb::ListTrustRequest {})
                .await?
                .into_inner()
                .entries;
            let mut table = Table::new(&["ID", "TYPE", "DESCRIPTION", "FINGERPRINT", "EXPIRES"]);
            let mut items = Vec::new();
            for e in &entries {
                let kind = match pb::TrustKind::try_from(e.kind) {
                    Ok(pb::TrustKind::Certificate) => "certificate",
                    Ok(pb::TrustKind::Token) => "token",
                    _ => "?",
                };
                let expires = human_time(&e.expire_time, "never");
                table.row(vec![
                    id(&e.name).to_owned(),
                    kind.into(),
                    e.description.clone(),
                    e.fingerprint.clone(),
                    expires.clone(),
                ]);
                items.push(json!({
                    "id": id(&e.name), "type": kind, "description": e.description,
                    "fingerprint": e.fingerprint, "expires_at": expires,
                }));
            }
            table.print(format, &items);
            Ok(())
        }
        TrustCommand::Remove { entry } => {
            let (remote, entry) = ctx.config.split(&entry);
            let client = ctx.client(remote.as_deref()).await?;
            client
                .trust()
                .remove_trust(pb::RemoveTrustRequest {
                    name: format!("trust/{}", id(entry)),
                })
                .await?;
            Ok(())
        }
    }
}

/// "trust/{id}" → "{id}"; a bare id stays.
fn id(name: &str) -> &str {
    name.strip_prefix("trust/").unwrap_or(name)
}
