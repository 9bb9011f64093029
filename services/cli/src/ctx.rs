//! What every command needs: the remotes, a connection, image names with an
//! optional `remote:` prefix, and progress bars.

use std::sync::Arc;

use imagestore_client::{Client, Progress, TlsOptions};
use imagestore_proto::v1 as pb;

use crate::config::{Config, Remote};
use crate::failure::CliResult;

pub struct Ctx {
    pub config: Config,
    pub quiet: bool,
}

impl Ctx {
    pub fn load(quiet: bool) -> CliResult<Self> {
        Ok(Self {
            config: Config::load()?,
            quiet,
        })
    }

    /// A connection to `remote` (None: the default remote).
    pub async fn client(&self, remote: Option<&str>) -> CliResult<Client> {
        connect(&self.config.target(remote)?).await
    }

    /// "[remote:]image" → the connection and the image, named as lxc names them.
    pub async fn image(&self, arg: &str, vm: bool) -> CliResult<(Client, pb::Image)> {
        let (remote, name) = self.config.split(arg);
        let client = self.client(remote.as_deref()).await?;
        let image = client.resolve(name, vm).await?;
        Ok((client, image))
    }

    /// The image `arg` (`[remote:]name`) names, on an imagestore server or, for
    /// LXD and simplestreams remotes, in the remote's catalogue.
    pub async fn describe(&self, arg: &str, vm: bool) -> CliResult<pb::Image> {
        let (remote, name) = self.config.split(arg);
        let target = self.config.target(remote.as_deref())?;
        if target.protocol == "imagestore" {
            return Ok(self.image(arg, vm).await?.1);
        }
        crate::browse::resolve(crate::browse::images(&target).await?, name, vm)
    }

    pub fn progress(&self) -> Arc<dyn Progress> {
        crate::progress::bars(self.quiet)
    }

    /// Prints a line for people, unless `--quiet`.
    pub fn say(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            println!("{line}");
        }
    }
}

/// A connection to `remote`: its token, and for https its pinned certificate and
/// this client's own certificate.
pub async fn connect(remote: &Remote) -> CliResult<Client> {
    if remote.protocol != "imagestore" {
        return Err(crate::failure::Failure::usage(format!(
            "{} is a {} remote: imagestore lists, shows and copies from it (`imagestore \
             list`, `info`, `copy REMOTE:IMAGE local:`), but does not change it",
            remote.addr, remote.protocol
        )));
    }
    let tls = if remote.addr.starts_with("https://") {
        TlsOptions {
            pin: remote.certificate_sha256.clone(),
            identity: Some(crate::config::client_certificate()?),
            address: None,
        }
    } else {
        TlsOptions::default()
    };
    Ok(Client::connect_with(&remote.addr, remote.token.as_deref(), tls).await?)
}
