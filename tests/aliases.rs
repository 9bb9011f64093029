//! Aliases and operations over gRPC on 127.0.0.1.

use imagestore_catalog::{OperationState, OperationUpdate};
use imagestore_proto::v1 as pb;
use imagestore_tests::*;
use prost_types::FieldMask;
use tokio_stream::StreamExt;
use tonic::Code;

fn alias(id: &str, target: &str, description: &str) -> pb::CreateAliasRequest {
    pb::CreateAliasRequest {
        alias_id: id.into(),
        alias: Some(pb::Alias {
            target: target.into(),
            description: description.into(),
            ..Default::default()
        }),
    }
}

fn named(name: &str) -> pb::GetAliasRequest {
    pb::GetAliasRequest {
        name: name.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn alias_lifecycle_create_get_list_retarget_rename_delete() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let a = register(&cp, unified("image a")).await;
    let b = register(&cp, split(b"m", b"vm disk", pb::ImageType::VirtualMachine)).await;
    let mut aliases = cp.aliases().await;

    // A 12-character prefix target is stored as the full fingerprint.
    let created = aliases
        .create_alias(alias("debian/12", &a.fingerprint[..12], "stable"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, "aliases/debian/12");
    assert_eq!(created.target, a.fingerprint);
    assert_eq!(created.r#type, pb::ImageType::Container as i32);
    // The name may come in alias.name instead of alias_id; "images/" targets work.
    let via_name = aliases
        .create_alias(pb::CreateAliasRequest {
            alias_id: String::new(),
            alias: Some(pb::Alias {
                name: "aliases/vm".into(),
                target: b.name.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(via_name.target, b.fingerprint);
    assert_eq!(via_name.r#type, pb::ImageType::VirtualMachine as i32);

    let got = aliases
        .get_alias(named("aliases/debian/12"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    let typed = aliases
        .get_alias(pb::GetAliasRequest {
            name: "aliases/vm".into(),
            r#type: pb::ImageType::Container as i32,
        })
        .await;
    assert_status(typed, Code::NotFound, "not for type \"container\"");

    // The image shows its alias.
    let image = cp
        .images()
        .await
        .get_image(pb::GetImageRequest {
            name: a.name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(image.aliases[0].name, "debian/12");
    assert_eq!(image.aliases[0].description, "stable");

    let listed = aliases
        .list_aliases(pb::ListAliasesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = listed.aliases.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["aliases/debian/12", "aliases/vm"]);
    let filtered = aliases
        .list_aliases(pb::ListAliasesRequest {
            filter: "debian".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.aliases.len(), 1);
    let paged = aliases
        .list_aliases(pb::ListAliasesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paged.aliases.len(), 1);
    let rest = aliases
        .list_aliases(pb::ListAliasesRequest {
            page_size: 1,
            page_token: paged.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.aliases[0].name, "aliases/vm");
    assert!(rest.next_page_token.is_empty());

    // Retarget and re-describe.
    let moved = aliases
        .update_alias(pb::UpdateAliasRequest {
            alias: Some(pb::Alias {
                name: "aliases/debian/12".into(),
                target: b.fingerprint.clone(),
                description: "now a VM".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["target".into(), "description".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.target, b.fingerprint);
    assert_eq!(moved.description, "now a VM");
    assert_eq!(moved.r#type, pb::ImageType::VirtualMachine as i32);
    let described = aliases
        .update_alias(pb::UpdateAliasRequest {
            alias: Some(pb::Alias {
                name: "aliases/debian/12".into(),
                description: "only the words".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["description".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.target, b.fingerprint, "target untouched");

    // Rename onto a taken name is refused and changes nothing; to a free one works.
    let clash = aliases
        .rename_alias(pb::RenameAliasRequest {
            name: "aliases/debian/12".into(),
            new_alias_id: "vm".into(),
        })
        .await;
    assert_status(clash, Code::AlreadyExists, "already exists");
    assert!(aliases.get_alias(named("aliases/debian/12")).await.is_ok());
    let renamed = aliases
        .rename_alias(pb::RenameAliasRequest {
            name: "aliases/debian/12".into(),
            new_alias_id: "debian/bookworm".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.name, "aliases/debian/bookworm");
    assert_eq!(renamed.target, b.fingerprint);
    assert_status(
        aliases.get_alias(named("aliases/debian/12")).await,
        Code::NotFound,
        "not found",
    );

    aliases
        .delete_alias(pb::DeleteAliasRequest {
            name: "aliases/debian/bookworm".into(),
        })
        .await
        .unwrap();
    assert_status(
        aliases
            .delete_alias(pb::DeleteAliasRequest {
                name: "aliases/debian/bookworm".into(),
            })
            .await,
        Code::NotFound,
        "not found",
    );
    // The image itself stays.
    assert!(
        cp.images()
            .await
            .get_image(pb::GetImageRequest {
                name: b.name,
                ..Default::default()
            })
            .await
            .is_ok()
    );
    cp.stop().await;
}

#[tokio::test]
async fn alias_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let a = register(&cp, unified("image a")).await;
    let mut aliases = cp.aliases().await;
    aliases
        .create_alias(alias("taken", &a.fingerprint, ""))
        .await
        .unwrap();

    let missing_image = "0".repeat(64);
    let cases: Vec<(pb::CreateAliasRequest, Code, &str)> = vec![
        (
            alias("taken", &a.fingerprint, ""),
            Code::AlreadyExists,
            "alias \"taken\" already exists",
        ),
        (
            alias("dangling", &missing_image, ""),
            Code::NotFound,
            "not found",
        ),
        (
            alias("dangling", &a.fingerprint[..8], ""),
            Code::InvalidArgument,
            "at least 12",
        ),
        (
            alias("dangling", "", ""),
            Code::InvalidArgument,
            "needs a target",
        ),
        (
            alias("-bad", &a.fingerprint, ""),
            Code::InvalidArgument,
            "start and end with a letter",
        ),
        (
            alias("a b", &a.fingerprint, ""),
            Code::InvalidArgument,
            "contains ' '",
        ),
        (
            alias("a?b", &a.fingerprint, ""),
            Code::InvalidArgument,
            "contains '?'",
        ),
        (
            alias(&"x".repeat(65), &a.fingerprint, ""),
            Code::InvalidArgument,
            "longer than 64",
        ),
        (
            alias("", &a.fingerprint, ""),
            Code::InvalidArgument,
            "alias_id (or alias.name) is required",
        ),
        (
            alias("ok", &a.fingerprint, &"d".repeat(5000)),
            Code::InvalidArgument,
            "description",
        ),
        (
            pb::CreateAliasRequest {
                alias_id: "ok".into(),
                alias: None,
            },
            Code::InvalidArgument,
            "alias is required",
        ),
        (
            pb::CreateAliasRequest {
                alias_id: "one".into(),
                alias: Some(pb::Alias {
                    name: "aliases/two".into(),
                    target: a.fingerprint.clone(),
                    ..Default::default()
                }),
            },
            Code::InvalidArgument,
            "disagree",
        ),
    ];
    for (req, code, needle) in cases {
        let id = req.alias_id.clone();
        let status = aliases.create_alias(req).await.expect_err(&id);
        assert_eq!(status.code(), code, "{id}: {status:?}");
        assert!(status.message().contains(needle), "{id}: {status:?}");
    }

    let no_mask = aliases
        .update_alias(pb::UpdateAliasRequest {
            alias: Some(pb::Alias {
                name: "aliases/taken".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await;
    assert_status(no_mask, Code::InvalidArgument, "update_mask is empty");
    let bad_path = aliases
        .update_alias(pb::UpdateAliasRequest {
            alias: Some(pb::Alias {
                name: "aliases/taken".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["type".into()],
            }),
        })
        .await;
    assert_status(bad_path, Code::InvalidArgument, "editable fields are");
    let retarget_missing = aliases
        .update_alias(pb::UpdateAliasRequest {
            alias: Some(pb::Alias {
                name: "aliases/taken".into(),
                target: missing_image.clone(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["target".into()],
            }),
        })
        .await;
    assert_status(retarget_missing, Code::NotFound, "not found");
    let rename_missing = aliases
        .rename_alias(pb::RenameAliasRequest {
            name: "aliases/nope".into(),
            new_alias_id: "other".into(),
        })
        .await;
    assert_status(rename_missing, Code::NotFound, "not found");
    let rename_bad = aliases
        .rename_alias(pb::RenameAliasRequest {
            name: "aliases/taken".into(),
            new_alias_id: "bad name".into(),
        })
        .await;
    assert_status(rename_bad, Code::InvalidArgument, "not valid");
    assert_status(
        aliases.get_alias(named("taken")).await,
        Code::InvalidArgument,
        "expected \"aliases/{alias}\"",
    );
    cp.stop().await;
}

#[tokio::test]
async fn registering_with_a_taken_alias_skips_it_instead_of_moving_it() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let mut first = unified("first");
    first.aliases.push(pb::AliasSpec {
        name: "stable".into(),
        description: String::new(),
    });
    let first = register(&cp, first).await;
    let mut second = unified("second");
    second.aliases = vec![
        pb::AliasSpec {
            name: "stable".into(),
            description: String::new(),
        },
        pb::AliasSpec {
            name: "fresh".into(),
            description: String::new(),
        },
    ];
    let reply = cp
        .registry()
        .await
        .register_content(second)
        .await
        .unwrap()
        .into_inner();
    assert!(reply.created);
    assert_eq!(reply.skipped_aliases, vec!["stable".to_string()]);
    let stable = cp
        .aliases()
        .await
        .get_alias(named("aliases/stable"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stable.target, first.fingerprint);
    cp.stop().await;
}

#[tokio::test]
async fn operations_can_be_read_listed_followed_and_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let mut ops = cp.operations().await;
    let op = cp
        .catalog
        .create_operation("Downloading image".into(), true)
        .await
        .unwrap();
    let name = format!("operations/{}", op.id);

    // Follow it while a worker reports progress and then success.
    let mut stream = ops
        .wait_operation(pb::WaitOperationRequest {
            name: name.clone(),
            timeout_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.state, pb::OperationState::Queued as i32);
    cp.catalog
        .update_operation(
            op.id.clone(),
            OperationUpdate {
                state: Some(OperationState::Running),
                stage: Some("download".into()),
                bytes_done: Some(512),
                bytes_total: Some(1024),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let running = stream.next().await.unwrap().unwrap();
    assert_eq!(running.state, pb::OperationState::Running as i32);
    let progress = running.progress.unwrap();
    assert_eq!((progress.bytes_done, progress.bytes_total), (512, 1024));
    cp.catalog
        .update_operation(
            op.id.clone(),
            OperationUpdate {
                state: Some(OperationState::Succeeded),
                bytes_done: Some(1024),
                image: Some("images/abc".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let done = stream.next().await.unwrap().unwrap();
    assert!(done.done);
    assert_eq!(done.image, "images/abc");
    assert!(stream.next().await.is_none(), "the stream ends once done");

    // A finished operation cannot be cancelled; a queued one can.
    let cancel_done = ops
        .cancel_operation(pb::CancelOperationRequest { name: name.clone() })
        .await;
    assert_status(cancel_done, Code::FailedPrecondition, "already SUCCEEDED");
    let other = cp
        .catalog
        .create_operation("Refreshing image".into(), true)
        .await
        .unwrap();
    let cancelled = ops
        .cancel_operation(pb::CancelOperationRequest {
            name: format!("operations/{}", other.id),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, pb::OperationState::Cancelled as i32);
    let fixed = cp
        .catalog
        .create_operation("Deleting image".into(), false)
        .await
        .unwrap();
    assert_status(
        ops.cancel_operation(pb::CancelOperationRequest {
            name: format!("operations/{}", fixed.id),
        })
        .await,
        Code::FailedPrecondition,
        "cannot be cancelled",
    );
    // A late report cannot revive a cancelled operation.
    assert!(
        cp.catalog
            .update_operation(other.id.clone(), OperationUpdate::default())
            .await
            .is_err()
    );

    // Newest first; filters.
    let all = ops
        .list_operations(pb::ListOperationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .operations;
    let ids: Vec<String> = all.iter().map(|o| o.name.clone()).collect();
    assert_eq!(
        ids,
        [
            format!("operations/{}", fixed.id),
            format!("operations/{}", other.id),
            name.clone()
        ]
    );
    let open = ops
        .list_operations(pb::ListOperationsRequest {
            filter: "done=false".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .operations;
    assert_eq!(open.len(), 1);
    let page = ops
        .list_operations(pb::ListOperationsRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let next = ops
        .list_operations(pb::ListOperationsRequest {
            page_size: 2,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.operations.len(), 1);
    assert_eq!(next.operations[0].name, name);
    assert_status(
        ops.list_operations(pb::ListOperationsRequest {
            filter: "state=SLEEPING".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "unknown state",
    );

    // A wait with a timeout ends quietly with the last state.
    let mut timed = ops
        .wait_operation(pb::WaitOperationRequest {
            name: format!("operations/{}", fixed.id),
            timeout_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let only = timed.next().await.unwrap().unwrap();
    assert!(!only.done);
    assert!(timed.next().await.is_none());

    for (name, code) in [
        ("operations/no-such-op", Code::NotFound),
        ("operations/", Code::InvalidArgument),
        ("ops/x", Code::InvalidArgument),
        ("operations/a/b", Code::InvalidArgument),
    ] {
        let r = ops
            .get_operation(pb::GetOperationRequest { name: name.into() })
            .await;
        assert_eq!(r.unwrap_err().code(), code, "{name}");
    }
    let wait_missing = ops
        .wait_operation(pb::WaitOperationRequest {
            name: "operations/missing".into(),
            timeout_seconds: 1,
        })
        .await;
    assert_status(wait_missing, Code::NotFound, "not found");
    cp.stop().await;
}
