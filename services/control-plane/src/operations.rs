//! imagestore.v1.Operations.

use std::pin::Pin;
use std::time::Duration;

use imagestore_catalog::{Catalog, OperationState, PageRequest};
use imagestore_proto::v1 as pb;
use imagestore_server::shutdown::Stopping;
use pb::operations_server::Operations;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::{ApiError, ApiResult, Reply, invalid};
use crate::names;

/// The longest a WaitOperation stream follows an operation.
const MAX_WAIT: Duration = Duration::from_secs(3600);

pub struct OperationsService {
    catalog: Catalog,
    stopping: Stopping,
}

impl OperationsService {
    pub fn new(catalog: Catalog, stopping: Stopping) -> Self {
        Self { catalog, stopping }
    }
}

fn parse_filter(filter: &str) -> ApiResult<(Option<OperationState>, Option<bool>)> {
    let mut state = None;
    let mut done = None;
    for term in filter.split_whitespace() {
        match term.split_once('=') {
            Some(("state", v)) => {
                state = Some(OperationState::parse(&v.to_ascii_uppercase()).ok_or_else(|| {
                    invalid(format!(
                        "unknown state {v:?} in filter; use QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED"
                    ))
                })?);
            }
            Some(("done", v)) => {
                done = Some(v.parse::<bool>().map_err(|_| {
                    invalid(format!("done={v:?} in filter: use done=true or done=false"))
                })?);
            }
            _ => {
                return Err(invalid(format!(
                    "filter term {term:?} is not understood; use state=STATE and/or done=true|false"
                )));
            }
        }
    }
    Ok((state, done))
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn get_operation(&self, req: Request<pb::GetOperationRequest>) -> Reply<pb::Operation> {
        let id = names::operation("name", &req.get_ref().name)?.to_owned();
        let op = self
            .catalog
            .get_operation(id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::operation(op)))
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Reply<pb::ListOperationsResponse> {
        let r = req.into_inner();
        let (state, done) = parse_filter(&r.filter)?;
        let page = PageRequest::new(
            r.page_size,
            &r.page_token,
            &format!("operations|{}", r.filter),
        )
        .map_err(ApiError::from)?;
        let page = self
            .catalog
            .list_operations(state, done, page)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: page.items.into_iter().map(convert::operation).collect(),
            next_page_token: page.next_token,
        }))
    }

    type WaitOperationStream = Pin<Box<dyn Stream<Item = Result<pb::Operation, Status>> + Send>>;

    async fn wait_operation(
        &self,
        req: Request<pb::WaitOperationRequest>,
    ) -> Reply<Self::WaitOperationStream> {
        let r = req.into_inner();
        let id = names::operation("name", &r.name)?.to_owned();
        let limit = match r.timeout_seconds {
            0 => MAX_WAIT,
            s => Duration::from_secs(u64::from(s)).min(MAX_WAIT),
        };
        // Subscribe before the first read so that no change between the two is missed.
        let mut changes = self.catalog.watch_operations();
        let first = self
            .catalog
            .get_operation(id.clone())
            .await
            .map_err(ApiError::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let catalog = self.catalog.clone();
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + limit;
            let mut last = first;
            if tx.send(Ok(convert::operation(last.clone()))).await.is_err() {
                return;
            }
            while !last.state.is_done() {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = tx.closed() => return,
                    // The client waits again, on this server once it is back.
                    () = stopping.stopped() => return,
                }
                let now = match catalog.get_operation(id.clone()).await {
                    Ok(op) => op,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::from(e).into())).await;
                        return;
                    }
                };
                if now != last {
                    last = now;
                    if tx.send(Ok(convert::operation(last.clone()))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_operation(
        &self,
        req: Request<pb::CancelOperationRequest>,
    ) -> Reply<pb::Operation> {
        let id = names::operation("name", &req.get_ref().name)?.to_owned();
        let op = self
            .catalog
            .cancel_operation(id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::operation(op)))
    }
}
