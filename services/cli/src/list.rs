//! `imagestore list [remote:] [filter...]` and `imagestore info <image>`.

use imagestore_proto::v1 as pb;

use crate::ctx::Ctx;
use crate::failure::{CliResult, Failure};
use crate::output::{Format, Table, human_time, image_json, mib, type_name, yaml};
use crate::remote::yes_no;

#[derive(clap::Args)]
pub struct ListArgs {
    /// `[remote:]` then filters: words match fingerprints and aliases; key=value
    /// matches a field or a property (os=ubuntu,debian), as `lxc image list`.
    args: Vec<String>,
    /// table, compact, json, yaml or csv.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Columns: l alias, L all aliases, f fingerprint, F full fingerprint,
    /// p public, d description, a architecture, s size, t type, u upload date.
    #[arg(long, short = 'c', default_value = "lfpdatsu")]
    columns: String,
}

pub async fn list(ctx: &Ctx, args: ListArgs) -> CliResult {
    let (remote, filters) = ctx.config.remote_and_filters(&args.args)?;
    let columns: Vec<Column> = args
        .columns
        .chars()
        .map(Column::from_char)
        .collect::<CliResult<_>>()?;
    let target = ctx.config.target(remote.as_deref())?;
    let images = if target.protocol == "imagestore" {
        list_server(ctx, remote.as_deref(), &filters).await?
    } else {
        crate::browse::filter(crate::browse::images(&target).await?, &filters.join(" "))?
    };
    let mut table = Table::new(&columns.iter().map(|c| c.header()).collect::<Vec<_>>());
    for image in &images {
        table.row(columns.iter().map(|c| c.cell(image)).collect());
    }
    table.sort();
    let items: Vec<_> = images.iter().map(image_json).collect();
    table.print(args.format, &items);
    Ok(())
}

/// Every image an imagestore server lists for `filters`, page by page.
async fn list_server(
    ctx: &Ctx,
    remote: Option<&str>,
    filters: &[String],
) -> CliResult<Vec<pb::Image>> {
    let client = ctx.client(remote).await?;
    let mut images = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .images()
            .list_images(pb::ListImagesRequest {
                page_size: 1000,
                page_token,
                filter: filters.join(" "),
            })
            .await?
            .into_inner();
        images.extend(page.images);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(images)
}

#[derive(Clone, Copy)]
enum Column {
    Alias,
    Aliases,
    Fingerprint,
    FullFingerprint,
    Public,
    Description,
    Architecture,
    Size,
    Type,
    Uploaded,
}

impl Column {
    fn from_char(c: char) -> CliResult<Self> {
        Ok(match c {
            'l' => Column::Alias,
            'L' => Column::Aliases,
            'f' => Column::Fingerprint,
            'F' => Column::FullFingerprint,
            'p' => Column::Public,
            'd' => Column::Description,
            'a' => Column::Architecture,
            's' => Column::Size,
            't' => Column::Type,
            'u' => Column::Uploaded,
            other => {
                return Err(Failure::usage(format!(
                    "Unknown column shorthand char '{other}' in --columns: use lLfFpdastu"
                )));
            }
        })
    }

    fn header(self) -> &'static str {
        match self {
            Column::Alias | Column::Aliases => "ALIAS",
            Column::Fingerprint | Column::FullFingerprint => "FINGERPRINT",
            Column::Public => "PUBLIC",
            Column::Description => "DESCRIPTION",
            Column::Architecture => "ARCHITECTURE",
            Column::Size => "SIZE",
            Column::Type => "TYPE",
            Column::Uploaded => "UPLOAD DATE",
        }
    }

    fn cell(self, i: &pb::Image) -> String {
        match self {
            Column::Alias => {
                let mut names: Vec<&str> = i.aliases.iter().map(|a| a.name.as_str()).collect();
                names.sort_by_key(|n| (n.len(), *n));
                match names.as_slice() {
                    [] => String::new(),
                    [one] => (*one).to_owned(),
                    [first, rest @ ..] => format!("{first} ({} more)", rest.len()),
                }
            }
            Column::Aliases => {
                let mut names: Vec<&str> = i.aliases.iter().map(|a| a.name.as_str()).collect();
                names.sort();
                names.join("\n")
            }
            Column::Fingerprint => i.fingerprint.chars().take(12).collect(),
            Column::FullFingerprint => i.fingerprint.clone(),
            Column::Public => yes_no(i.public).into(),
            Column::Description => {
                let description = i.properties.get("description").cloned().unwrap_or_default();
                match &i.damage {
                    // Where a person reads the table: it is not served.
                    Some(_) => format!("[DAMAGED] {description}").trim_end().to_owned(),
                    None => description,
                }
            }
            Column::Architecture => i.architecture.clone(),
            Column::Size => mib(i.size),
            Column::Type => type_name(i.r#type).to_uppercase(),
            Column::Uploaded => human_time(&i.upload_time, ""),
        }
    }
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// `[remote:]image`: an alias, a fingerprint or a unique fingerprint prefix.
    image: String,
    /// When an alias names both a container and a VM image, take the VM one.
    #[arg(long)]
    vm: bool,
    /// text (default), json (the object `list --format json` prints) or yaml.
    #[arg(long, short = 'f', default_value = "text", value_parser = ["text", "json", "yaml"])]
    format: String,
}

pub async fn info(ctx: &Ctx, args: InfoArgs) -> CliResult {
    let image = ctx.describe(&args.image, args.vm).await?;
    match args.format.as_str() {
        "json" => println!("{}", image_json(&image)),
        "yaml" => print!("{}", yaml(&image_json(&image))),
        _ => print!("{}", info_text(&image)),
    }
    Ok(())
}

fn info_text(i: &pb::Image) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "Fingerprint: {}", i.fingerprint);
    let _ = writeln!(s, "Size: {}", mib(i.size));
    let _ = writeln!(s, "Architecture: {}", i.architecture);
    let _ = writeln!(s, "Type: {}", type_name(i.r#type));
    let _ = writeln!(s, "Public: {}", yes_no(i.public));
    let _ = writeln!(s, "Stores: {}", i.stores.join(", "));
    for f in &i.failed_stores {
        let _ = writeln!(s, "    Copy to {} failed: {}", f.store, f.message);
    }
    if let Some(d) = &i.damage {
        let _ = writeln!(s, "Damaged: {}", d.message);
        let _ = writeln!(s, "    Found: {}", human_time(&d.detect_time, "unknown"));
        let _ = writeln!(s, "    Not served until deleted, or verified sound again");
    }
    let _ = writeln!(s, "Timestamps:");
    let _ = writeln!(s, "    Created: {}", human_time(&i.create_time, "unknown"));
    let _ = writeln!(s, "    Uploaded: {}", human_time(&i.upload_time, "unknown"));
    let _ = writeln!(s, "    Expires: {}", human_time(&i.expire_time, "never"));
    let _ = writeln!(
        s,
        "    Last used: {}",
        human_time(&i.last_use_time, "never")
    );
    let _ = writeln!(s, "Properties:");
    let mut props: Vec<_> = i.properties.iter().collect();
    props.sort();
    for (k, v) in props {
        let _ = writeln!(s, "    {k}: {v}");
    }
    let _ = writeln!(s, "Aliases:");
    for a in &i.aliases {
        match a.description.as_str() {
            "" => {
                let _ = writeln!(s, "    - {}", a.name);
            }
            d => {
                let _ = writeln!(s, "    - {} ({d})", a.name);
            }
        }
    }
    let _ = writeln!(s, "Cached: {}", yes_no(i.cached));
    let _ = writeln!(
        s,
        "Auto update: {}",
        if i.auto_update { "enabled" } else { "disabled" }
    );
    if let Some(src) = &i.update_source {
        let _ = writeln!(s, "Source:");
        let _ = writeln!(s, "    Server: {}", src.server);
        let _ = writeln!(s, "    Protocol: {}", src.protocol);
        let _ = writeln!(s, "    Alias: {}", src.alias);
    }
    s
}
