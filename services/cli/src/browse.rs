//! Browsing remotes that are not imagestore servers (LXD's REST API,
//! simplestreams), as `lxc image list images:` does: the remote's catalogue is
//! read whole and filtered here with the same filter language the server uses.

use imagestore_catalog as cat;
use imagestore_fetch::{Fetcher, ImportFiltering, Limits, lxd_server, simplestreams};
use imagestore_proto::v1 as pb;

use crate::config::Remote;
use crate::failure::{CliResult, Failure, exit};

/// Every image `remote` shows this (untrusted) client.
pub async fn images(remote: &Remote) -> CliResult<Vec<pb::Image>> {
    let url =
        imagestore_fetch::parse_url(&remote.addr).map_err(|e| Failure::usage(e.to_string()))?;
    // The user's own request to the remote they added: no import filtering
    // beyond that host.
    let filtering = ImportFiltering {
        allowed_hosts: url.host_str().map(str::to_owned).into_iter().collect(),
        allowed_ports: Vec::new(),
        ..ImportFiltering::default()
    };
    let fetcher = Fetcher::new(filtering, Limits::default()).map_err(failed)?;
    let pin = remote.certificate_sha256.as_deref();
    match remote.protocol.as_str() {
        "lxd" => lxd_server::catalogue(&fetcher, &remote.addr, pin).await,
        _ => {
            let arch = imagestore_image::canonical_architecture(std::env::consts::ARCH)
                .unwrap_or(std::env::consts::ARCH);
            simplestreams::catalogue(&fetcher, &remote.addr, pin, arch).await
        }
    }
    .map_err(failed)
}

fn failed(e: imagestore_fetch::FetchError) -> Failure {
    Failure::new(exit::code_of(e.code()), e.to_string())
}

/// The images `filter` (the server's filter language) keeps.
pub fn filter(images: Vec<pb::Image>, filter: &str) -> CliResult<Vec<pb::Image>> {
    let filter = cat::ImageFilter::parse(filter).map_err(|e| Failure::usage(e.to_string()))?;
    Ok(images
        .into_iter()
        .filter(|i| filter.matches(&as_record(i)))
        .collect())
}

/// The image `name` names among `images`: an alias first (of the type asked
/// for), then a unique fingerprint prefix, as lxc resolves names.
pub fn resolve(images: Vec<pb::Image>, name: &str, vm: bool) -> CliResult<pb::Image> {
    let want = if vm {
        pb::ImageType::VirtualMachine
    } else {
        pb::ImageType::Container
    } as i32;
    let (aliased, others): (Vec<_>, Vec<_>) = images
        .into_iter()
        .partition(|i| i.aliases.iter().any(|a| a.name == name));
    if let Some(found) = aliased.into_iter().find(|i| i.r#type == want) {
        return Ok(found);
    }
    let mut matching = others
        .into_iter()
        .filter(|i| i.fingerprint.starts_with(&name.to_ascii_lowercase()));
    match (matching.next(), matching.next()) {
        (Some(one), None) if !name.is_empty() => Ok(one),
        (Some(_), Some(_)) => Err(Failure::new(
            exit::code_of(tonic::Code::FailedPrecondition),
            format!("more than one image matches {name:?}: give more characters"),
        )),
        _ => Err(Failure::new(
            exit::code_of(tonic::Code::NotFound),
            format!("Image not found: {name:?}"),
        )),
    }
}

/// The record the filter reads, from what the remote said.
fn as_record(i: &pb::Image) -> cat::Image {
    cat::Image {
        fingerprint: i.fingerprint.clone(),
        image_type: if i.r#type == pb::ImageType::VirtualMachine as i32 {
            cat::ImageType::VirtualMachine
        } else {
            cat::ImageType::Container
        },
        architecture: i.architecture.clone(),
        size: i.size,
        filename: i.filename.clone(),
        layout: cat::Layout::Unified,
        parts: Vec::new(),
        properties: i.properties.clone().into_iter().collect(),
        public: i.public,
        auto_update: false,
        cached: false,
        created_at: None,
        uploaded_at: 0,
        last_used_at: None,
        expires_at: None,
        update_source: None,
        aliases: i
            .aliases
            .iter()
            .map(|a| cat::AliasRef {
                name: a.name.clone(),
                description: a.description.clone(),
            })
            .collect(),
        damage: None,
        stores: Vec::new(),
        failed_stores: Vec::new(),
    }
}
