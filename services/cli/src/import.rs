//! `imagestore import`, `copy` and `refresh`: images that arrive by upload from
//! this machine, or that the server fetches itself (an Operation to follow).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use imagestore_client::{Client, Source, UploadOptions, alias_specs};
use imagestore_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;

use crate::ctx::Ctx;
use crate::failure::{CliResult, Failure, exit};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// A unified tarball, an image directory, a metadata tarball and a rootfs file,
    /// or a URL (the server fetches it); optionally `remote:` and key=value
    /// properties, as `lxc image import`.
    #[arg(required = true)]
    args: Vec<String>,
    /// An alias for the new image (repeatable).
    #[arg(long)]
    alias: Vec<String>,
    /// Make the image public.
    #[arg(long)]
    public: bool,
    /// A property, key=value (repeatable).
    #[arg(long = "prop", value_name = "KEY=VALUE")]
    prop: Vec<String>,
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
}

pub async fn import(ctx: &Ctx, args: ImportArgs) -> CliResult {
    let mut remote = None;
    let mut files = Vec::new();
    let mut properties = HashMap::new();
    for a in &args.args {
        if let Some(r) = a.strip_suffix(':')
            && ctx.config.remotes.contains_key(r)
        {
            remote = Some(r.to_owned());
        } else if a.contains('=') && !Path::new(a).exists() && !is_url(a) {
            let (k, v) = key_value(a)?;
            properties.insert(k, v);
        } else {
            files.push(a.clone());
        }
    }
    for p in &args.prop {
        let (k, v) = key_value(p)?;
        properties.insert(k, v);
    }
    let client = ctx.client(remote.as_deref()).await?;
    let image = match files.as_slice() {
        [url] if is_url(url) => {
            let req = pb::ImportImageRequest {
                source: Some(pb::import_image_request::Source::Url(pb::UrlSource {
                    url: url.clone(),
                })),
                aliases: alias_specs(&args.alias),
                public: args.public,
                properties,
                target: args.stores.selection(),
                ..Default::default()
            };
            let op = client.imports().import_image(req).await?.into_inner();
            follow(ctx, &client, op).await?
        }
        [one] => {
            let path = existing(one)?;
            let packed;
            let source = if path.is_dir() {
                if !ctx.quiet {
                    eprintln!("Packing {}", path.display());
                }
                packed = crate::pack::pack_directory(&path)?;
                Source::Unified(packed.path().to_path_buf())
            } else {
                Source::Unified(path)
            };
            upload(ctx, &client, source, &args, properties).await?
        }
        [metadata, rootfs] => {
            let source = Source::Split {
                metadata: existing(metadata)?,
                rootfs: existing(rootfs)?,
            };
            upload(ctx, &client, source, &args, properties).await?
        }
        _ => {
            return Err(Failure::usage(
                "import takes one file, directory or URL, or a metadata tarball and a rootfs file",
            ));
        }
    };
    ctx.say(format!(
        "Image imported with fingerprint: {}",
        image.fingerprint
    ));
    Ok(())
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn key_value(s: &str) -> CliResult<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(Failure::usage(format!(
            "Bad property {s:?}: expected key=value"
        ))),
    }
}

fn existing(path: &str) -> CliResult<PathBuf> {
    let p = PathBuf::from(path);
    match std::fs::metadata(&p) {
        Ok(_) => Ok(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Failure::not_found(format!(
            "{path}: no such file or directory"
        ))),
        Err(e) => Err(Failure::usage(format!("{path}: {e}"))),
    }
}

async fn upload(
    ctx: &Ctx,
    client: &Client,
    source: Source,
    args: &ImportArgs,
    properties: HashMap<String, String>,
) -> CliResult<pb::Image> {
    let (aliases, public) = (args.alias.clone(), args.public);
    let resume = resume_file(client.url(), &source, &aliases, public);
    if resume.exists() && !ctx.quiet {
        eprintln!("Resuming the interrupted upload of the same files");
    }
    let opts = UploadOptions {
        resume_file: Some(resume),
        aliases,
        public,
        properties,
        target: args.stores.selection(),
        ..Default::default()
    };
    let image = client
        .upload(&source, &opts, ctx.progress())
        .await
        .map_err(|e| Failure::resumable(e, "the upload is kept on the server"))?;
    // An alias asked for but not on the image is another image's already.
    let taken = opts
        .aliases
        .iter()
        .filter(|name| !image.aliases.iter().any(|a| &a.name == *name));
    say_taken(taken.map(String::as_str));
    Ok(image)
}

/// Names taken on this server keep what they point at: say so.
fn say_taken<'a>(names: impl Iterator<Item = &'a str>) {
    for alias in names {
        eprintln!("Alias {alias} already exists here and was left as it is");
    }
}

/// Where an interrupted import of these exact files to this server keeps its
/// session, so that running the same command again continues it.
fn resume_file(url: &str, source: &Source, aliases: &[String], public: bool) -> PathBuf {
    let mut h = Sha256::new();
    h.update(url.as_bytes());
    for f in source.files() {
        let canonical = std::fs::canonicalize(f).unwrap_or_else(|_| f.to_path_buf());
        h.update(canonical.as_os_str().as_encoded_bytes());
        if let Ok(m) = std::fs::metadata(f) {
            h.update(m.len().to_le_bytes());
            if let Ok(t) = m.modified()
                && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
            {
                h.update(d.as_nanos().to_le_bytes());
            }
        }
    }
    h.update(aliases.join("\n").as_bytes());
    h.update([public as u8]);
    crate::config::dir()
        .join("uploads")
        .join(format!("{}.json", hex::encode(&h.finalize()[..16])))
}

/// Follows a server-side operation to its end with a progress bar; returns the
/// image it made.
pub async fn follow(ctx: &Ctx, client: &Client, op: pb::Operation) -> CliResult<pb::Image> {
    Ok(follow_to_end(ctx, client, op).await?.1)
}

/// As [`follow`], with the operation as it ended (its metadata says more).
async fn follow_to_end(
    ctx: &Ctx,
    client: &Client,
    op: pb::Operation,
) -> CliResult<(pb::Operation, pb::Image)> {
    let progress = ctx.progress();
    progress.status(&op.description);
    let name = op.name.clone();
    let followed = tokio::select! {
        followed = watch(client, op, progress.as_ref()) => followed?,
        _ = tokio::signal::ctrl_c() => {
            progress.finish();
            return Err(interrupted(client, &name).await);
        }
    };
    finish(client, followed, progress.as_ref()).await
}

/// Ctrl-C while following `name`: the operation runs on the server whatever
/// happens here, so ask (on a terminal) whether to cancel it there too.
async fn interrupted(client: &Client, name: &str) -> Failure {
    use std::io::IsTerminal;
    let id = name.trim_start_matches("operations/");
    let ask = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let cancel = ask
        && {
            eprint!("\nCancel operation {id} on the server too? [y/N] ");
            let answer = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map(|_| line)
            })
            .await;
            matches!(answer, Ok(Ok(line)) if line.trim().eq_ignore_ascii_case("y") || line.trim().eq_ignore_ascii_case("yes"))
        };
    if cancel {
        return match client
            .operations()
            .cancel_operation(pb::CancelOperationRequest {
                name: name.to_owned(),
            })
            .await
        {
            Ok(_) => Failure::new(
                exit::INTERRUPTED,
                format!("Interrupted; operation {id} was cancelled on the server"),
            ),
            Err(e) => Failure::new(
                exit::INTERRUPTED,
                format!(
                    "Interrupted; cancelling operation {id} failed ({}): `imagestore operation \
                     cancel {id}`",
                    e.message()
                ),
            ),
        };
    }
    Failure::new(
        exit::INTERRUPTED,
        format!(
            "Interrupted; operation {id} goes on on the server: `imagestore operation wait \
             {id}` follows it, `imagestore operation cancel {id}` stops it"
        ),
    )
}

/// Follows the operation until it is done.
async fn watch(
    client: &Client,
    op: pb::Operation,
    progress: &dyn imagestore_client::Progress,
) -> CliResult<pb::Operation> {
    let mut last = op;
    let mut started = false;
    // A wait ends at the server's time limit or when it restarts: wait again
    // until the operation is done.
    while !last.done {
        let mut stream = client
            .operations()
            .wait_operation(pb::WaitOperationRequest {
                name: last.name.clone(),
                timeout_seconds: 0,
            })
            .await?
            .into_inner();
        while let Some(next) = stream.next().await {
            last = next?;
            if let Some(p) = &last.progress
                && p.bytes_total > 0
            {
                if !started {
                    progress.start(&p.stage, p.bytes_total);
                    started = true;
                }
                progress.position(p.bytes_done);
            }
            if last.done {
                break;
            }
        }
    }
    Ok(last)
}

/// What a finished operation made, or its error.
async fn finish(
    client: &Client,
    last: pb::Operation,
    progress: &dyn imagestore_client::Progress,
) -> CliResult<(pb::Operation, pb::Image)> {
    progress.finish();
    match pb::OperationState::try_from(last.state).unwrap_or_default() {
        pb::OperationState::Succeeded => {
            let skipped = last.metadata.get("skipped_aliases").map(String::as_str);
            say_taken(
                skipped
                    .unwrap_or_default()
                    .split(',')
                    .filter(|a| !a.is_empty()),
            );
            let image = client
                .images()
                .get_image(pb::GetImageRequest {
                    name: last.image.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((last, image))
        }
        state => {
            let (code, message) = last
                .error
                .map(|e| (tonic::Code::from(e.code), e.message))
                .unwrap_or((
                    tonic::Code::Unknown,
                    format!("operation {}", state.as_str_name()),
                ));
            Err(tonic::Status::new(code, message).into())
        }
    }
}

#[derive(clap::Args)]
pub struct CopyArgs {
    /// `[remote:]image` on the source server.
    source: String,
    /// `remote:` to copy to.
    target: String,
    /// An alias for the copy (repeatable).
    #[arg(long)]
    alias: Vec<String>,
    /// Copy the source's aliases too (existing names are left alone).
    #[arg(long)]
    copy_aliases: bool,
    /// Keep the copy up to date with the source.
    #[arg(long)]
    auto_update: bool,
    /// When the alias names both a container and a VM image, copy the VM one.
    #[arg(long)]
    vm: bool,
    /// Make the copy public.
    #[arg(long)]
    public: bool,
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
}

pub async fn copy(ctx: &Ctx, args: CopyArgs) -> CliResult {
    let (src_remote, name) = ctx.config.split(&args.source);
    let src_name = src_remote.unwrap_or_else(|| ctx.config.default_name());
    let src = ctx.config.remote(&src_name)?.clone();
    let target = args
        .target
        .strip_suffix(':')
        .filter(|r| ctx.config.remotes.contains_key(*r))
        .ok_or_else(|| {
            Failure::usage(format!(
                "{:?} is not a remote: the target is written `remote:` (see `imagestore remote list`)",
                args.target
            ))
        })?;
    if src_name == target {
        return Err(Failure::usage(
            "The source and target servers must be different",
        ));
    }
    let source = if src.protocol == "lxd" {
        // Resolved here as lxc does (alias, then fingerprint prefix), then read
        // on the server as an untrusted client: by the alias it was named by
        // (so that --auto-update can follow it), else by full fingerprint. A
        // private image needs a secret, given through the Imports API.
        let image = crate::browse::resolve(crate::browse::images(&src).await?, name, args.vm)?;
        let by_alias = image.aliases.iter().any(|a| a.name == name);
        pb::import_image_request::Source::Lxd(pb::LxdSource {
            server: src.addr.clone(),
            image: if by_alias {
                name.to_owned()
            } else {
                image.fingerprint.clone()
            },
            copy_aliases: args.copy_aliases,
            certificate_sha256: src.certificate_sha256.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if src.protocol == "simplestreams" {
        pb::import_image_request::Source::Simplestreams(pb::SimplestreamsSource {
            server: src.addr.clone(),
            image: name.to_owned(),
            architecture: String::new(),
            copy_aliases: args.copy_aliases,
            certificate_sha256: src.certificate_sha256.clone().unwrap_or_default(),
        })
    } else {
        // As lxc: resolve on the source; a private image travels with a one-time
        // secret and by fingerprint, a public one by the alias it was named by.
        let (source_client, image) = ctx.image(&args.source, args.vm).await?;
        let by_alias = image.aliases.iter().any(|a| a.name == name);
        let (image_name, secret) = if image.public {
            let n = if by_alias {
                name.to_owned()
            } else {
                image.fingerprint.clone()
            };
            (n, String::new())
        } else {
            if args.auto_update {
                return Err(Failure::usage(
                    "--auto-update requires the source to be an alias and for it to be public",
                ));
            }
            let secret = source_client
                .images()
                .create_image_secret(pb::CreateImageSecretRequest {
                    name: format!("images/{}", image.fingerprint),
                })
                .await?
                .into_inner()
                .secret;
            (image.fingerprint.clone(), secret)
        };
        pb::import_image_request::Source::Remote(pb::RemoteSource {
            server: src.addr.clone(),
            image: image_name,
            secret,
            copy_aliases: args.copy_aliases,
            certificate_sha256: src.certificate_sha256.clone().unwrap_or_default(),
            ..Default::default()
        })
    };
    let client = ctx.client(Some(target)).await?;
    let req = pb::ImportImageRequest {
        source: Some(source),
        aliases: alias_specs(&args.alias),
        public: args.public,
        auto_update: args.auto_update,
        r#type: if args.vm {
            pb::ImageType::VirtualMachine as i32
        } else {
            0
        },
        target: args.stores.selection(),
        ..Default::default()
    };
    let op = client.imports().import_image(req).await?.into_inner();
    follow(ctx, &client, op).await?;
    ctx.say("Image copied successfully!");
    Ok(())
}

/// `imagestore refresh <image>...`.
pub async fn refresh(ctx: &Ctx, images: Vec<String>) -> CliResult {
    for arg in images {
        let (client, image) = ctx.image(&arg, false).await?;
        let op = client
            .images()
            .refresh_image(pb::RefreshImageRequest {
                name: format!("images/{}", image.fingerprint),
            })
            .await?
            .into_inner();
        let (done, fresh) = follow_to_end(ctx, &client, op).await?;
        // The server says whether the image was replaced; a newer version it
        // found here already (under another fingerprint) is no refresh.
        let refreshed = done
            .metadata
            .get("refreshed")
            .map_or(fresh.fingerprint != image.fingerprint, |r| r == "true");
        if refreshed {
            ctx.say(format!("Image {arg} was refreshed: {}", fresh.fingerprint));
        } else {
            ctx.say(format!("Image {arg} is up to date"));
        }
    }
    Ok(())
}
