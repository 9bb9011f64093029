//! `imagestore remote add|list|remove|rename|switch|get-default`.

use std::io::{IsTerminal, Write};

use clap::Subcommand;

use crate::config::{Config, Remote};
use crate::failure::{CliResult, Failure, exit};
use crate::output::{Format, Table};

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Add a remote server: `remote add NAME URL` (http://host:port); URL may
    /// name several replicas of one installation separated by commas
    /// (https://a:7443,https://b:7443), tried in that order.
    Add {
        /// The remote's name, as in `NAME:image`.
        name: String,
        /// Its address (https://host:port; several replicas' separated by commas).
        url: String,
        /// imagestore (default), lxd (an LXD or Incus server's REST API, read as
        /// an untrusted client) or simplestreams.
        #[arg(long, default_value = "imagestore")]
        protocol: String,
        /// The remote is a public image server: no trust needed.
        #[arg(long)]
        public: bool,
        /// A bearer token the server trusts (`imagestore trust add` on it, or its
        /// admin-token file's content).
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// Read the token from this file (e.g. the server's admin-token).
        #[arg(long, value_name = "FILE")]
        token_file: Option<std::path::PathBuf>,
        /// https: accept the server's certificate without asking (check the
        /// fingerprint printed against the server's own).
        #[arg(long)]
        accept_certificate: bool,
        /// Use the token once, to make the server trust this client's certificate
        /// (mutual TLS), and keep no token: as `lxc remote add` with a trust token.
        #[arg(long)]
        trust_client_certificate: bool,
    },
    /// Set or clear the token presented to a remote:
    /// `remote set-token NAME [--token T | --token-file F]` (neither: clear it).
    SetToken {
        /// The remote.
        name: String,
        /// The token.
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// Read the token from this file.
        #[arg(long, value_name = "FILE")]
        token_file: Option<std::path::PathBuf>,
    },
    /// List the remotes.
    List {
        /// table, compact, json, yaml or csv.
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove a remote.
    #[command(alias = "rm")]
    Remove {
        /// The remote.
        name: String,
    },
    /// Rename a remote.
    #[command(alias = "mv")]
    Rename {
        /// Its name now.
        old: String,
        /// Its new name.
        new: String,
    },
    /// Make a remote the default.
    Switch {
        /// The remote.
        name: String,
    },
    /// Print the default remote's name.
    GetDefault,
}

pub async fn run(mut config: Config, cmd: RemoteCommand) -> CliResult {
    match cmd {
        RemoteCommand::Add {
            name,
            url,
            protocol,
            public,
            token,
            token_file,
            accept_certificate,
            trust_client_certificate,
        } => {
            check_name(&name)?;
            let token = read_token(token, token_file)?;
            if config.remotes.contains_key(&name) {
                return Err(Failure::new(
                    exit::EXISTS,
                    format!("Remote {name} exists already"),
                ));
            }
            if !matches!(protocol.as_str(), "imagestore" | "simplestreams" | "lxd") {
                return Err(Failure::usage(format!(
                    "Invalid protocol {protocol:?}: use imagestore, lxd or simplestreams"
                )));
            }
            let addrs = normalise_urls(&url, default_port(&protocol))?;
            let certificate_sha256 = if addrs[0].starts_with("https://") {
                Some(accept(&addrs, accept_certificate).await?)
            } else {
                None
            };
            let addr = addrs.join(",");
            let mut remote = Remote {
                addr,
                protocol,
                public,
                token,
                certificate_sha256,
            };
            if trust_client_certificate {
                if remote.token.is_none() {
                    return Err(Failure::usage(
                        "--trust-client-certificate needs --token or --token-file",
                    ));
                }
                trust_this_client(&remote).await?;
                remote.token = None;
            }
            config.remotes.insert(name, remote);
            config.save()
        }
        RemoteCommand::SetToken {
            name,
            token,
            token_file,
        } => {
            let token = read_token(token, token_file)?;
            config.remote(&name)?;
            if let Some(r) = config.remotes.get_mut(&name) {
                r.token = token;
            }
            config.save()
        }
        RemoteCommand::List { format } => {
            let default = config.default_name();
            let mut table = Table::new(&["NAME", "URL", "PROTOCOL", "PUBLIC", "TOKEN"]);
            let mut items = Vec::new();
            for (name, r) in &config.remotes {
                let shown = if *name == default {
                    format!("{name} (current)")
                } else {
                    name.clone()
                };
                table.row(vec![
                    shown,
                    r.addr.clone(),
                    r.protocol.clone(),
                    yes_no(r.public).into(),
                    yes_no(r.token.is_some()).into(),
                ]);
                items.push(serde_json::json!({
                    "name": name, "addr": r.addr, "protocol": r.protocol, "public": r.public,
                    "token": r.token.is_some(),
                }));
            }
            table.print(format, &items);
            Ok(())
        }
        RemoteCommand::Remove { name } => {
            config.remote(&name)?;
            if name == config.default_remote {
                return Err(Failure::usage(format!(
                    "Can't remove the default remote {name}: switch to another first"
                )));
            }
            config.remotes.remove(&name);
            config.save()
        }
        RemoteCommand::Rename { old, new } => {
            check_name(&new)?;
            let remote = config.remote(&old)?.clone();
            if config.remotes.contains_key(&new) {
                return Err(Failure::new(
                    exit::EXISTS,
                    format!("Remote {new} exists already"),
                ));
            }
            config.remotes.remove(&old);
            config.remotes.insert(new.clone(), remote);
            if config.default_remote == old {
                config.default_remote = new;
            }
            config.save()
        }
        RemoteCommand::Switch { name } => {
            config.remote(&name)?;
            config.default_remote = name;
            config.save()
        }
        RemoteCommand::GetDefault => {
            println!("{}", config.default_name());
            Ok(())
        }
    }
}

/// The server's certificate fingerprint, once the user has accepted it.
async fn accept(addrs: &[String], accepted: bool) -> CliResult<String> {
    // Replicas of one installation present one certificate: one pin serves all.
    let fingerprint = imagestore_client::server_fingerprint(&addrs[0]).await?;
    for other in &addrs[1..] {
        let theirs = imagestore_client::server_fingerprint(other).await?;
        if theirs != fingerprint {
            return Err(Failure::usage(format!(
                "{} presents certificate {fingerprint} but {other} presents {theirs}: the \
                 addresses of one remote must be replicas of one installation, with one \
                 certificate (give each replica the same certificate and key)",
                addrs[0]
            )));
        }
    }
    println!("Certificate fingerprint: {fingerprint}");
    if accepted {
        return Ok(fingerprint);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(
            "the server's certificate must be accepted: compare the fingerprint above with \
             the server's (its log or `openssl x509 -fingerprint -sha256`), then run again \
             with --accept-certificate",
        ));
    }
    print!("ok (y/n)? ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure::new(exit::FAILED, format!("reading the answer: {e}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(fingerprint)
    } else {
        Err(Failure::usage("Server certificate NACKed by user"))
    }
}

/// Uses the remote's token to add this client's certificate to its trust store.
async fn trust_this_client(remote: &Remote) -> CliResult {
    let pair = crate::config::client_certificate()?;
    let client = crate::ctx::connect(remote).await?;
    let added = client
        .trust()
        .add_certificate(imagestore_proto::v1::AddCertificateRequest {
            certificate_pem: pair.cert_pem,
            description: format!(
                "imagestore client ({})",
                std::env::var("USER").unwrap_or_default()
            ),
        })
        .await;
    match added {
        Ok(_) => Ok(()),
        // Trusted already: what was asked for holds.
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(s.into()),
    }
}

/// `--token`, or the first line of `--token-file`.
fn read_token(
    token: Option<String>,
    file: Option<std::path::PathBuf>,
) -> CliResult<Option<String>> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?,
        ),
        None => token,
    };
    let token = token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    if let Some(t) = &token {
        imagestore_client::Bearer::new(Some(t)).map_err(|e| Failure::usage(e.to_string()))?;
    }
    Ok(token)
}

pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn check_name(name: &str) -> CliResult {
    if name.is_empty() || name.contains(':') || name.contains('/') || name.contains(' ') {
        return Err(Failure::usage(format!(
            "Invalid remote name {name:?}: it may not be empty or contain ':', '/' or spaces"
        )));
    }
    Ok(())
}

/// One address, or several separated by commas (replicas of one installation,
/// tried in that order), each normalised; all with one scheme.
fn normalise_urls(urls: &str, port: u16) -> CliResult<Vec<String>> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| normalise_url(u, port))
        .collect::<CliResult<Vec<_>>>()?;
    let Some(first) = addrs.first() else {
        return Err(Failure::usage("Invalid remote URL: it is empty"));
    };
    let scheme = |a: &str| a.split_once("://").map(|(s, _)| s.to_owned());
    if addrs.iter().any(|a| scheme(a) != scheme(first)) {
        return Err(Failure::usage(format!(
            "Invalid remote URL {urls:?}: the addresses of one remote are all http:// or all \
             https://"
        )));
    }
    Ok(addrs)
}

/// The port a remote of `protocol` listens on unless its URL says: LXD's 8443,
/// imagestore's 7443, HTTPS's 443 for a simplestreams server.
fn default_port(protocol: &str) -> u16 {
    match protocol {
        "lxd" => 8443,
        "simplestreams" => 443,
        _ => 7443,
    }
}

/// "host:port" or a URL; a missing scheme means http:// on loopback and https://
/// elsewhere; a missing port means `port`.
fn normalise_url(url: &str, port: u16) -> CliResult<String> {
    let url = url.trim_end_matches('/');
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_owned(), r),
        None => {
            let host = url.rsplit_once(':').map_or(url, |(h, _)| h);
            let local = matches!(host, "localhost" | "[::1]") || host.starts_with("127.");
            (if local { "http" } else { "https" }.to_owned(), url)
        }
    };
    if !matches!(scheme.as_str(), "http" | "https") || rest.is_empty() || rest.contains('/') {
        return Err(Failure::usage(format!(
            "Invalid remote URL {url:?}: expected http://HOST:PORT or https://HOST:PORT"
        )));
    }
    let has_port = rest
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let rest = if has_port {
        rest.to_owned()
    } else {
        format!("{rest}:{port}")
    };
    Ok(format!("{scheme}://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::{normalise_url, normalise_urls};

    #[test]
    fn urls_get_a_scheme_and_a_port() {
        assert_eq!(
            normalise_url("127.0.0.1:9", 7443).unwrap(),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            normalise_url("images.example.net", 7443).unwrap(),
            "https://images.example.net:7443"
        );
        assert_eq!(
            normalise_url("https://lxd.example.net", 8443).unwrap(),
            "https://lxd.example.net:8443"
        );
        assert_eq!(
            normalise_url("http://[::1]:80/", 7443).unwrap(),
            "http://[::1]:80"
        );
        assert!(normalise_url("ftp://x:1", 7443).is_err());
        assert!(normalise_url("http://x:1/path", 7443).is_err());
    }

    #[test]
    fn several_addresses_are_replicas_with_one_scheme() {
        assert_eq!(
            normalise_urls("127.0.0.1:9, 127.0.0.2:9", 7443).unwrap(),
            ["http://127.0.0.1:9", "http://127.0.0.2:9"]
        );
        assert!(normalise_urls("http://a:1,https://b:1", 7443).is_err());
        assert!(normalise_urls(" , ", 7443).is_err());
    }
}
