//! `imagestore alias create|delete|rename|list|edit`.

use clap::Subcommand;
use imagestore_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ctx::Ctx;
use crate::failure::{CliResult, Failure};
use crate::output::{Format, Table, type_name};

#[derive(Subcommand)]
pub enum AliasCommand {
    /// Create an alias: `alias create [remote:]NAME IMAGE`.
    Create {
        /// `[remote:]NAME` of the new alias.
        alias: String,
        /// Fingerprint, unique prefix or another alias.
        target: String,
        /// What the alias is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete an alias.
    #[command(alias = "rm")]
    Delete {
        /// `[remote:]NAME`.
        alias: String,
    },
    /// Rename an alias: `alias rename [remote:]OLD NEW`.
    #[command(alias = "mv")]
    Rename {
        /// `[remote:]OLD`.
        alias: String,
        /// The new name.
        new_name: String,
    },
    /// List aliases: `alias list [remote:] [filter...]`.
    #[command(alias = "ls")]
    List {
        /// `[remote:]` then filters (words in alias names).
        args: Vec<String>,
        /// table, compact, json, yaml or csv.
        #[arg(long, short = 'f', value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Edit an alias's target and description (YAML in $EDITOR, or on stdin).
    Edit {
        /// `[remote:]NAME`.
        alias: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: AliasCommand) -> CliResult {
    match cmd {
        AliasCommand::Create {
            alias,
            target,
            description,
        } => {
            let (remote, name) = ctx.config.split(&alias);
            let client = ctx.client(remote.as_deref()).await?;
            let image = client.resolve(&target, false).await?;
            client
                .aliases()
                .create_alias(pb::CreateAliasRequest {
                    alias_id: name.to_owned(),
                    alias: Some(pb::Alias {
                        target: image.fingerprint,
                        description,
                        ..Default::default()
                    }),
                })
                .await?;
            Ok(())
        }
        AliasCommand::Delete { alias } => {
            let (remote, name) = ctx.config.split(&alias);
            let client = ctx.client(remote.as_deref()).await?;
            client
                .aliases()
                .delete_alias(pb::DeleteAliasRequest {
                    name: format!("aliases/{name}"),
                })
                .await?;
            Ok(())
        }
        AliasCommand::Rename { alias, new_name } => {
            let (remote, name) = ctx.config.split(&alias);
            let client = ctx.client(remote.as_deref()).await?;
            client
                .aliases()
                .rename_alias(pb::RenameAliasRequest {
                    name: format!("aliases/{name}"),
                    new_alias_id: new_name,
                })
                .await?;
            Ok(())
        }
        AliasCommand::List { args, format } => list(ctx, args, format).await,
        AliasCommand::Edit { alias } => edit(ctx, &alias).await,
    }
}

/// Every alias an imagestore server has, page by page.
async fn server_aliases(ctx: &Ctx, remote: Option<&str>) -> CliResult<Vec<pb::Alias>> {
    let client = ctx.client(remote).await?;
    let mut aliases = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .aliases()
            .list_aliases(pb::ListAliasesRequest {
                page_size: 1000,
                page_token,
                filter: String::new(),
            })
            .await?
            .into_inner();
        aliases.extend(page.aliases);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(aliases)
}

async fn list(ctx: &Ctx, args: Vec<String>, format: Format) -> CliResult {
    let (remote, filters) = ctx.config.remote_and_filters(&args)?;
    let target = ctx.config.target(remote.as_deref())?;
    let mut aliases = if target.protocol == "imagestore" {
        server_aliases(ctx, remote.as_deref()).await?
    } else {
        // An LXD or simplestreams remote: the aliases its images carry.
        crate::browse::images(&target)
            .await?
            .into_iter()
            .flat_map(|i| {
                i.aliases.into_iter().map(move |a| pb::Alias {
                    name: format!("aliases/{}", a.name),
                    target: i.fingerprint.clone(),
                    description: a.description,
                    r#type: i.r#type,
                    ..Default::default()
                })
            })
            .collect()
    };
    // As lxc: every filter is a substring of the alias name or of the target.
    aliases.retain(|a| {
        let name = a.name.trim_start_matches("aliases/");
        filters
            .iter()
            .all(|f| name.contains(f.as_str()) || a.target.starts_with(f.as_str()))
    });
    let mut table = Table::new(&["ALIAS", "FINGERPRINT", "TYPE", "DESCRIPTION"]);
    let mut items = Vec::new();
    for a in &aliases {
        let name = a.name.trim_start_matches("aliases/");
        table.row(vec![
            name.to_owned(),
            a.target.chars().take(12).collect(),
            type_name(a.r#type).to_uppercase(),
            a.description.clone(),
        ]);
        items.push(json!({
            "name": name, "target": a.target, "type": type_name(a.r#type), "description": a.description,
        }));
    }
    table.sort();
    table.print(format, &items);
    Ok(())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EditableAlias {
    #[serde(default)]
    description: String,
    target: String,
}

async fn edit(ctx: &Ctx, alias: &str) -> CliResult {
    let (remote, name) = ctx.config.split(alias);
    let client = ctx.client(remote.as_deref()).await?;
    let current = client
        .aliases()
        .get_alias(pb::GetAliasRequest {
            name: format!("aliases/{name}"),
            ..Default::default()
        })
        .await?
        .into_inner();
    let text = serde_yaml_ng::to_string(&EditableAlias {
        description: current.description.clone(),
        target: current.target.clone(),
    })
    .unwrap_or_default();
    let edited = crate::manage::edit_text(
        &text,
        "### This is a YAML representation of the image alias.\n### Any line starting with a '# will be ignored.\n",
    )?;
    let new: EditableAlias = serde_yaml_ng::from_str(&edited)
        .map_err(|e| Failure::usage(format!("The edited alias is not valid: {e}")))?;
    let target = client.resolve(&new.target, false).await?.fingerprint;
    client
        .aliases()
        .update_alias(pb::UpdateAliasRequest {
            alias: Some(pb::Alias {
                name: format!("aliases/{name}"),
                target,
                description: new.description,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["target".into(), "description".into()],
            }),
        })
        .await?;
    Ok(())
}
