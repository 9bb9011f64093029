//! Commands on one image: export, delete, properties, edit.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use imagestore_client::{Client, ExportTarget};
use imagestore_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::ctx::Ctx;
use crate::failure::{CliResult, Failure, exit};
use crate::output::datetime;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// `[remote:]image`.
    image: String,
    /// A directory, or a file path (split images add `.root` for the rootfs).
    /// Default: the current directory.
    target: Option<PathBuf>,
    /// When an alias names both a container and a VM image, take the VM one.
    #[arg(long)]
    vm: bool,
}

pub async fn export(ctx: &Ctx, args: ExportArgs) -> CliResult {
    let (client, image) = ctx.image(&args.image, args.vm).await?;
    let target = match &args.target {
        Some(p) => ExportTarget::from_path(p),
        None => ExportTarget::Directory(PathBuf::from(".")),
    };
    let exported = client
        .export(
            &format!("images/{}", image.fingerprint),
            args.vm,
            &target,
            5,
            ctx.progress(),
        )
        .await
        .map_err(|e| Failure::resumable(e, "what was downloaded is kept"))?;
    ctx.say("Image exported successfully!");
    for f in exported.files {
        ctx.say(f.display());
    }
    Ok(())
}

pub async fn delete(ctx: &Ctx, images: Vec<String>) -> CliResult {
    for arg in images {
        let (client, image) = ctx.image(&arg, false).await?;
        client
            .images()
            .delete_image(pb::DeleteImageRequest {
                name: format!("images/{}", image.fingerprint),
            })
            .await?;
    }
    Ok(())
}

/// Sends `image` back; the server takes the fields named in `paths` (and checks
/// the etag it carries).
async fn update(client: &Client, mut image: pb::Image, paths: Vec<String>) -> CliResult {
    image.name = format!("images/{}", image.fingerprint);
    client
        .images()
        .update_image(pb::UpdateImageRequest {
            image: Some(image),
            update_mask: Some(prost_types::FieldMask { paths }),
        })
        .await?;
    Ok(())
}

pub async fn set_property(ctx: &Ctx, image: &str, key: &str, value: &str) -> CliResult {
    let (client, mut found) = ctx.image(image, false).await?;
    found.properties.insert(key.to_owned(), value.to_owned());
    update(&client, found, vec![format!("properties.{key}")]).await
}

pub async fn unset_property(ctx: &Ctx, image: &str, key: &str) -> CliResult {
    let (client, mut found) = ctx.image(image, false).await?;
    if found.properties.remove(key).is_none() {
        return Err(Failure::not_found(format!("Property not found: {key}")));
    }
    update(&client, found, vec![format!("properties.{key}")]).await
}

pub async fn get_property(ctx: &Ctx, image: &str, key: &str) -> CliResult {
    let (_, found) = ctx.image(image, false).await?;
    match found.properties.get(key) {
        Some(v) => {
            println!("{v}");
            Ok(())
        }
        None => Err(Failure::not_found(format!("Property not found: {key}"))),
    }
}

/// The editable part of an image, as `lxc image edit` shows it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Editable {
    #[serde(default)]
    auto_update: bool,
    #[serde(default)]
    properties: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    public: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

pub async fn edit(ctx: &Ctx, arg: &str) -> CliResult {
    let (client, image) = ctx.image(arg, false).await?;
    let current = Editable {
        auto_update: image.auto_update,
        properties: image.properties.clone().into_iter().collect(),
        public: image.public,
        expires_at: datetime(&image.expire_time)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    };
    let text = serde_yaml_ng::to_string(&current).unwrap_or_default();
    let edited = edit_text(
        &text,
        "### This is a YAML representation of the image properties.\n### Any line starting with a '# will be ignored.\n",
    )?;
    let new: Editable = serde_yaml_ng::from_str(&edited)
        .map_err(|e| Failure::usage(format!("The edited image is not valid: {e}")))?;
    let mut paths = vec![
        "public".to_owned(),
        "auto_update".to_owned(),
        "properties".to_owned(),
    ];
    let mut updated = pb::Image {
        public: new.public,
        auto_update: new.auto_update,
        properties: new.properties.into_iter().collect(),
        ..image
    };
    if let Some(e) = new.expires_at {
        let t = chrono::DateTime::parse_from_rfc3339(&e).map_err(|err| {
            Failure::usage(format!("expires_at {e:?} is not an RFC 3339 time: {err}"))
        })?;
        updated.expire_time = Some(prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        });
        paths.push("expire_time".into());
    }
    update(&client, updated, paths).await
}

/// Text edited by the user: from stdin when it is not a terminal (scripts pipe the
/// new YAML in, as with lxc), else in $VISUAL / $EDITOR.
pub fn edit_text(current: &str, banner: &str) -> CliResult<String> {
    if !std::io::stdin().is_terminal() {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::new(exit::FAILED, format!("reading stdin: {e}")))?;
        return refuse_empty(s);
    }
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .map_err(|e| Failure::new(exit::FAILED, format!("temporary file: {e}")))?;
    std::fs::write(file.path(), format!("{banner}{current}"))
        .map_err(|e| Failure::new(exit::FAILED, format!("temporary file: {e}")))?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file.path())
        .status()
        .map_err(|e| Failure::new(exit::FAILED, format!("cannot run {editor}: {e}")))?;
    if !status.success() {
        return Err(Failure::new(
            exit::FAILED,
            format!("{editor} failed: {status}"),
        ));
    }
    let text = std::fs::read_to_string(file.path())
        .map_err(|e| Failure::new(exit::FAILED, format!("reading the edited file: {e}")))?;
    refuse_empty(
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// Nothing (or only comments and blanks) is not "remove everything": a
/// `</dev/null` or an editor quit without saving would otherwise wipe every
/// property. Nothing is changed.
fn refuse_empty(text: String) -> CliResult<String> {
    let meaningful = text
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    if meaningful {
        return Ok(text);
    }
    Err(Failure::usage(
        "The edited text is empty: nothing was changed (to clear the properties, send \
         `properties: {}`)",
    ))
}

/// Verifies each image on its server, says what was found, and fails (exit 7)
/// when any is damaged.
pub async fn verify(ctx: &Ctx, images: Vec<String>) -> CliResult {
    let mut damaged = Vec::new();
    for arg in &images {
        let (client, image) = ctx.image(arg, false).await?;
        let op = client
            .images()
            .verify_image(pb::VerifyImageRequest {
                name: format!("images/{}", image.fingerprint),
            })
            .await?
            .into_inner();
        match crate::import::follow(ctx, &client, op).await {
            Ok(_) => ctx.say(format!(
                "Image {arg} is sound: every part matches its SHA-256 ({})",
                image.fingerprint
            )),
            Err(f) if f.code == exit::INTEGRITY => {
                eprintln!("Image {arg} is DAMAGED: {}", f.message);
                damaged.push(arg.as_str());
            }
            Err(f) => return Err(f),
        }
    }
    match damaged.as_slice() {
        [] => Ok(()),
        names => Err(Failure::new(
            exit::INTEGRITY,
            format!(
                "{} of {} images are damaged ({}); they are not served: delete them and upload or \
                 import them again",
                names.len(),
                images.len(),
                names.join(", ")
            ),
        )),
    }
}
