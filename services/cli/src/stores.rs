//! `imagestore store ...` (Glance's stores: list them, copy an image to more of
//! them, remove it from one) and the `--store` options of import and copy.

use imagestore_proto::v1 as pb;

use crate::ctx::Ctx;
use crate::failure::CliResult;
use crate::output::{Format, Table};

/// Where an upload, import or copy writes (Glance's `stores`, `all_stores`,
/// `all_stores_must_succeed`).
#[derive(clap::Args, Debug, Default)]
pub struct StoreArgs {
    /// A store to write the image to (repeatable; the first is where the bytes
    /// land first). Default: the server's default store.
    #[arg(long = "store", value_name = "STORE")]
    stores: Vec<String>,
    /// Write the image to every store the server has.
    #[arg(long, conflicts_with = "stores")]
    all_stores: bool,
    /// Keep the image in the stores that took it when others fail (they are
    /// listed on the image); by default one failure fails the whole request.
    #[arg(long)]
    allow_store_failures: bool,
}

impl StoreArgs {
    /// The selection to send; None leaves it to the server's default.
    pub fn selection(&self) -> Option<pb::StoreSelection> {
        if self.stores.is_empty() && !self.all_stores && !self.allow_store_failures {
            return None;
        }
        Some(pb::StoreSelection {
            stores: self.stores.clone(),
            all_stores: self.all_stores,
            all_stores_must_succeed: Some(!self.allow_store_failures),
        })
    }
}

#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// List the server's stores, its default one and the nodes that reach each.
    #[command(alias = "ls")]
    List {
        /// `remote:` to ask; the default remote otherwise.
        remote: Option<String>,
        /// table, compact, json, yaml or csv.
        #[arg(long, short = 'f', value_enum, default_value = "table")]
        format: Format,
    },
    /// Copy an image to more stores (Glance's copy-image): each copy is hashed
    /// as it streams and recorded only when it matches.
    Copy {
        /// `[remote:]image`.
        image: String,
        #[command(flatten)]
        target: StoreArgs,
    },
    /// Remove an image from one store while another keeps it.
    #[command(alias = "rm")]
    Remove {
        /// `[remote:]image`.
        image: String,
        /// The store to remove it from.
        store: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: StoreCommand) -> CliResult {
    match cmd {
        StoreCommand::List { remote, format } => {
            let remote = remote.as_deref().map(|r| r.trim_end_matches(':'));
            let client = ctx.client(remote).await?;
            let stores = client
                .images()
                .list_stores(pb::ListStoresRequest {})
                .await?
                .into_inner()
                .stores;
            let mut table = Table::new(&["NAME", "DEFAULT", "HEALTHY NODES"]);
            let mut items = Vec::new();
            for s in stores {
                items.push(serde_json::json!({
                    "name": s.name, "default": s.default, "nodes": s.nodes,
                }));
                table.row(vec![
                    s.name,
                    if s.default { "yes" } else { "" }.to_owned(),
                    s.nodes.to_string(),
                ]);
            }
            table.print(format, &items);
            Ok(())
        }
        StoreCommand::Copy { image, target } => {
            let (client, found) = ctx.image(&image, false).await?;
            let op = client
                .images()
                .copy_image(pb::CopyImageRequest {
                    name: format!("images/{}", found.fingerprint),
                    target: target.selection(),
                })
                .await?
                .into_inner();
            let copied = crate::import::follow(ctx, &client, op).await?;
            ctx.say(format!(
                "Image {} is in {}",
                copied.fingerprint,
                copied.stores.join(", ")
            ));
            for f in &copied.failed_stores {
                eprintln!("Copying to store {} failed: {}", f.store, f.message);
            }
            Ok(())
        }
        StoreCommand::Remove { image, store } => {
            let (client, found) = ctx.image(&image, false).await?;
            let left = client
                .images()
                .remove_image_location(pb::RemoveImageLocationRequest {
                    name: format!("images/{}", found.fingerprint),
                    store: store.clone(),
                })
                .await?
                .into_inner();
            ctx.say(format!(
                "Image {} removed from {store}; it is in {}",
                left.fingerprint,
                left.stores.join(", ")
            ));
            Ok(())
        }
    }
}
