//! Services whose contract is fixed but whose server side is not built yet. They
//! are served so that clients and grpcurl see the whole API, and answer
//! UNIMPLEMENTED with a sentence rather than a bare "unknown service".

use imagestore_proto::v1 as pb;
use tonic::{Request, Status};

use crate::error::Reply;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} are not available on this server yet"))
}

pub struct PendingImports;

#[tonic::async_trait]
impl pb::imports_server::Imports for PendingImports {
    async fn import_image(&self, _: Request<pb::ImportImageRequest>) -> Reply<pb::Operation> {
        Err(not_yet("server-side imports"))
    }
}
