//! `imagestore operation list|show|wait|cancel`: the server-side work that
//! imports, copies, refreshes and verifications run as.

use imagestore_proto::v1 as pb;

use crate::ctx::Ctx;
use crate::failure::CliResult;
use crate::output::{Format, Table, human_time, yaml};

#[derive(clap::Subcommand)]
pub enum OperationCommand {
    /// List operations, newest first.
    #[command(alias = "ls")]
    List {
        /// `remote:` to ask; the default remote otherwise.
        remote: Option<String>,
        /// Only those still queued or running.
        #[arg(long)]
        running: bool,
        /// table, compact, json, yaml or csv.
        #[arg(long, short = 'f', value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one operation.
    Show {
        /// `[remote:]ID` (or `operations/ID`).
        operation: String,
        /// yaml (default) or json.
        #[arg(long, short = 'f', default_value = "yaml", value_parser = ["yaml", "json"])]
        format: String,
    },
    /// Follow an operation to its end with a progress bar; the exit code says
    /// how it ended.
    Wait {
        /// `[remote:]ID` (or `operations/ID`).
        operation: String,
    },
    /// Cancel a queued or running operation: the server stops it and deletes
    /// what it stored.
    Cancel {
        /// `[remote:]ID` (or `operations/ID`).
        operation: String,
    },
}

/// `[remote:]ID` → the remote and the operation's resource name.
fn name_of(ctx: &Ctx, arg: &str) -> (Option<String>, String) {
    let (remote, id) = ctx.config.split(arg);
    let id = id.strip_prefix("operations/").unwrap_or(id);
    (remote, format!("operations/{id}"))
}

/// QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED, as the catalog names them.
/// The operation `[remote:]ID` names, as its server has it now, and the
/// client that asked.
async fn fetch(
    ctx: &Ctx,
    operation: &str,
) -> CliResult<(imagestore_client::Client, pb::Operation)> {
    let (remote, name) = name_of(ctx, operation);
    let client = ctx.client(remote.as_deref()).await?;
    let op = client
        .operations()
        .get_operation(pb::GetOperationRequest { name })
        .await?
        .into_inner();
    Ok((client, op))
}

fn state_name(state: i32) -> &'static str {
    pb::OperationState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("OPERATION_STATE_"))
        .unwrap_or("UNKNOWN")
}

fn json(o: &pb::Operation) -> serde_json::Value {
    let p = o.progress.clone().unwrap_or_default();
    serde_json::json!({
        "id": o.name.trim_start_matches("operations/"),
        "description": o.description,
        "state": state_name(o.state),
        "stage": p.stage,
        "bytes_done": p.bytes_done,
        "bytes_total": p.bytes_total,
        "bytes_per_second": p.bytes_per_second,
        "image": o.image,
        "error": o.error.as_ref().map(|e| serde_json::json!({"code": e.code, "message": e.message})),
        "metadata": o.metadata,
        "may_cancel": o.may_cancel,
        "created_at": human_time(&o.create_time, ""),
        "updated_at": human_time(&o.update_time, ""),
    })
}

pub async fn run(ctx: &Ctx, cmd: OperationCommand) -> CliResult {
    match cmd {
        OperationCommand::List {
            remote,
            running,
            format,
        } => {
            let remote = remote.as_deref().map(|r| r.trim_end_matches(':'));
            let client = ctx.client(remote).await?;
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .operations()
                    .list_operations(pb::ListOperationsRequest {
                        page_size: 1000,
                        page_token,
                        filter: if running {
                            "done=false".into()
                        } else {
                            String::new()
                        },
                    })
                    .await?
                    .into_inner();
                all.extend(page.operations);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            let mut table =
                Table::new(&["ID", "DESCRIPTION", "STATE", "STAGE", "PROGRESS", "CREATED"]);
            for o in &all {
                let v = json(o);
                let p = o.progress.clone().unwrap_or_default();
                table.row(vec![
                    v["id"].as_str().unwrap_or_default().to_owned(),
                    o.description.clone(),
                    v["state"].as_str().unwrap_or_default().to_owned(),
                    p.stage,
                    p.bytes_done
                        .saturating_mul(100)
                        .checked_div(p.bytes_total)
                        .map(|pct| format!("{pct}%"))
                        .unwrap_or_default(),
                    human_time(&o.create_time, ""),
                ]);
            }
            let items: Vec<_> = all.iter().map(json).collect();
            table.print(format, &items);
            Ok(())
        }
        OperationCommand::Show { operation, format } => {
            let (_, op) = fetch(ctx, &operation).await?;
            match format.as_str() {
                "json" => println!("{}", json(&op)),
                _ => print!("{}", yaml(&json(&op))),
            }
            Ok(())
        }
        OperationCommand::Wait { operation } => {
            let (client, op) = fetch(ctx, &operation).await?;
            let image = crate::import::follow(ctx, &client, op).await?;
            ctx.say(format!("Operation succeeded: image {}", image.fingerprint));
            Ok(())
        }
        OperationCommand::Cancel { operation } => {
            let (remote, name) = name_of(ctx, &operation);
            let client = ctx.client(remote.as_deref()).await?;
            let op = client
                .operations()
                .cancel_operation(pb::CancelOperationRequest { name })
                .await?
                .into_inner();
            ctx.say(format!(
                "Operation {} is {}",
                op.name.trim_start_matches("operations/"),
                state_name(op.state)
            ));
            Ok(())
        }
    }
}
