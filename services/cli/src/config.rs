//! The CLI's remotes, kept in `config.yml` in the user's config directory (or
//! IMAGESTORE_CONFIG_DIR), in the shape `lxc` keeps them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::failure::{CliResult, Failure, exit};

/// The address `imagestore serve` listens on by default.
pub const LOCAL_ADDR: &str = "http://127.0.0.1:7443";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Remote {
    pub addr: String,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default)]
    pub public: bool,
    /// A bearer token this server trusts (from `imagestore trust add`, or its
    /// admin-token file); none for an untrusted client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The SHA-256 of the server's certificate (https remotes), accepted on
    /// `remote add` as lxc accepts a remote's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<String>,
}

fn default_protocol() -> String {
    "imagestore".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(rename = "default-remote")]
    pub default_remote: String,
    pub remotes: BTreeMap<String, Remote>,
}

impl Default for Config {
    fn default() -> Self {
        let mut remotes = BTreeMap::new();
        remotes.insert(
            "local".into(),
            Remote {
                addr: LOCAL_ADDR.into(),
                protocol: default_protocol(),
                public: false,
                token: None,
                certificate_sha256: None,
            },
        );
        Self {
            default_remote: "local".into(),
            remotes,
        }
    }
}

/// The config directory: IMAGESTORE_CONFIG_DIR, else `~/.config/imagestore`.
pub fn dir() -> PathBuf {
    match std::env::var_os("IMAGESTORE_CONFIG_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => dirs::config_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("imagestore"),
    }
}

impl Config {
    fn path() -> PathBuf {
        dir().join("config.yml")
    }

    pub fn load() -> CliResult<Self> {
        let path = Self::path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_yaml_ng::from_slice(&bytes).map_err(|e| {
                Failure::usage(format!(
                    "{}: {e}; fix or remove the file to start with the defaults",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Failure::new(
                exit::FAILED,
                format!("{}: {e}", path.display()),
            )),
        }
    }

    pub fn save(&self) -> CliResult {
        let path = Self::path();
        write_private(
            &path,
            serde_yaml_ng::to_string(self)
                .unwrap_or_default()
                .as_bytes(),
        )
    }

    /// The remote named `name`.
    pub fn remote(&self, name: &str) -> CliResult<&Remote> {
        self.remotes
            .get(name)
            .ok_or_else(|| self.no_such_remote(name))
    }

    /// The error for a remote name that is not configured, naming those that are.
    fn no_such_remote(&self, name: &str) -> Failure {
        let mut known: Vec<&str> = self.remotes.keys().map(String::as_str).collect();
        known.sort_unstable();
        Failure::not_found(format!(
            "The remote \"{name}\" does not exist; the remotes are {} (see `imagestore remote \
             list`, `imagestore remote add`)",
            known.join(", ")
        ))
    }

    /// The default remote's name: IMAGESTORE_REMOTE when it names a remote, else
    /// the configured default.
    pub fn default_name(&self) -> String {
        match std::env::var("IMAGESTORE_REMOTE") {
            Ok(r) if !r.is_empty() && !r.contains("://") => r,
            _ => self.default_remote.clone(),
        }
    }

    /// The remote to talk to (None: the default remote, or IMAGESTORE_REMOTE's
    /// URL, whose certificate is then pinned by IMAGESTORE_CERTIFICATE_SHA256), with
    /// the token to present there: IMAGESTORE_TOKEN when set and this is the default
    /// remote, else the remote's own.
    pub fn target(&self, remote: Option<&str>) -> CliResult<Remote> {
        let env = |name: &str| std::env::var(name).ok().filter(|t| !t.trim().is_empty());
        let from_env = env("IMAGESTORE_TOKEN");
        if remote.is_none()
            && let Some(url) = env("IMAGESTORE_REMOTE")
            && url.contains("://")
        {
            return Ok(Remote {
                addr: url,
                protocol: default_protocol(),
                public: false,
                token: from_env,
                certificate_sha256: env("IMAGESTORE_CERTIFICATE_SHA256"),
            });
        }
        let name = remote
            .map(str::to_owned)
            .unwrap_or_else(|| self.default_name());
        let mut remote = self.remote(&name)?.clone();
        // Only the default remote gets the environment's token: another server
        // named on the same command line must never see it.
        if from_env.is_some() && name == self.default_name() {
            remote.token = from_env;
        }
        Ok(remote)
    }

    /// `[remote:] [filter...]` as `list` commands take them: a first argument
    /// "name:" picks the remote (one that is not configured is an error, not a
    /// filter that matches nothing); the rest are filters.
    pub fn remote_and_filters(&self, args: &[String]) -> CliResult<(Option<String>, Vec<String>)> {
        match args.split_first() {
            Some((first, rest)) => match first.strip_suffix(':') {
                Some(r) if self.remotes.contains_key(r) => Ok((Some(r.to_owned()), rest.to_vec())),
                Some(r) if !r.is_empty() && !r.contains([':', '=', ' ']) => {
                    Err(self.no_such_remote(r))
                }
                _ => Ok((None, args.to_vec())),
            },
            None => Ok((None, Vec::new())),
        }
    }

    /// Splits "remote:rest" when "remote" is a known remote (as lxc does);
    /// otherwise the whole string is `rest` on the default remote.
    pub fn split<'a>(&self, arg: &'a str) -> (Option<String>, &'a str) {
        if let Some((remote, rest)) = arg.split_once(':')
            && self.remotes.contains_key(remote)
        {
            return (Some(remote.to_owned()), rest);
        }
        (None, arg)
    }
}

/// The certificate this client presents to https remotes: `client.crt` and
/// `client.key` in the config directory, made on first use as lxc makes its own.
pub fn client_certificate() -> CliResult<imagestore_auth::CertPair> {
    let d = dir();
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "imagestore-client".into());
    imagestore_auth::load_or_generate(&d.join("client.crt"), &d.join("client.key"), &host, &[])
        .map(|(pair, _)| pair)
        .map_err(|e| Failure::new(exit::FAILED, format!("the client certificate: {e}")))
}

/// Writes a file only its owner can read (it holds tokens).
pub fn write_private(path: &Path, data: &[u8]) -> CliResult {
    imagestore_auth::write_private(path, data)
        .map_err(|e| Failure::new(exit::FAILED, format!("{}: {e}", path.display())))
}
