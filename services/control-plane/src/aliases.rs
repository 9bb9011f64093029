//! imagestore.v1.Aliases.

use imagestore_catalog::{AliasEdit, Catalog, PageRequest};
use imagestore_proto::v1 as pb;
use pb::aliases_server::Aliases;
use tonic::{Request, Response};

use crate::auth::Auth;
use crate::convert;
use crate::error::{ApiError, Reply, invalid};
use crate::names;

pub struct AliasesService {
    catalog: Catalog,
    auth: Auth,
}

impl AliasesService {
    pub fn new(catalog: Catalog, auth: Auth) -> Self {
        Self { catalog, auth }
    }
}

#[tonic::async_trait]
impl Aliases for AliasesService {
    async fn create_alias(&self, req: Request<pb::CreateAliasRequest>) -> Reply<pb::Alias> {
        self.auth.require_trusted(&req)?;
        let r = req.into_inner();
        let alias = r
            .alias
            .ok_or_else(|| invalid("alias is required (with its target)"))?;
        let name = match (r.alias_id.as_str(), alias.name.as_str()) {
            ("", "") => return Err(invalid("alias_id (or alias.name) is required").into()),
            ("", full) => names::alias("alias.name", full)?.to_owned(),
            (id, "") => id.to_owned(),
            (id, full) => {
                let from_name = names::alias("alias.name", full)?;
                if from_name != id {
                    return Err(invalid(format!(
                        "alias_id {id:?} and alias.name {full:?} disagree; give one"
                    ))
                    .into());
                }
                id.to_owned()
            }
        };
        let created = self
            .catalog
            .create_alias(name, alias.target, alias.description)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::alias(created)))
    }

    async fn get_alias(&self, req: Request<pb::GetAliasRequest>) -> Reply<pb::Alias> {
        let reader = self.auth.reader(&req).await?;
        let public_only = reader.public_only;
        let r = req.into_inner();
        let name = names::alias("name", &r.name)?.to_owned();
        let alias = self
            .catalog
            .get_alias(name, convert::want_type(r.r#type)?, public_only)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::alias(alias)))
    }

    async fn list_aliases(
        &self,
        req: Request<pb::ListAliasesRequest>,
    ) -> Reply<pb::ListAliasesResponse> {
        let reader = self.auth.reader(&req).await?;
        let public_only = reader.public_only;
        let r = req.into_inner();
        if r.filter.len() > 1024 {
            return Err(invalid("filter is longer than 1024 bytes").into());
        }
        let scope = format!("aliases|{public_only}|{}", r.filter);
        let page = PageRequest::new(r.page_size, &r.page_token, &scope).map_err(ApiError::from)?;
        let page = self
            .catalog
            .list_aliases(r.filter, page, public_only)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListAliasesResponse {
            aliases: page.items.into_iter().map(convert::alias).collect(),
            next_page_token: page.next_token,
        }))
    }

    async fn update_alias(&self, req: Request<pb::UpdateAliasRequest>) -> Reply<pb::Alias> {
        self.auth.require_trusted(&req)?;
        let r = req.into_inner();
        let alias = r.alias.ok_or_else(|| invalid("alias is required"))?;
        let name = names::alias("alias.name", &alias.name)?.to_owned();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(
                invalid("update_mask is empty: name \"target\" and/or \"description\"").into(),
            );
        }
        let mut edit = AliasEdit::default();
        for path in &paths {
            match path.as_str() {
                "target" => edit.target = Some(alias.target.clone()),
                "description" => edit.description = Some(alias.description.clone()),
                "name" => {
                    return Err(invalid("an alias's name changes through RenameAlias").into());
                }
                other => {
                    return Err(invalid(format!(
                        "update_mask names {other:?}; an alias's editable fields are \"target\" and \"description\""
                    ))
                    .into());
                }
            }
        }
        let updated = self
            .catalog
            .update_alias(name, edit)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::alias(updated)))
    }

    async fn rename_alias(&self, req: Request<pb::RenameAliasRequest>) -> Reply<pb::Alias> {
        self.auth.require_trusted(&req)?;
        let r = req.into_inner();
        let name = names::alias("name", &r.name)?.to_owned();
        let new_name = r
            .new_alias_id
            .strip_prefix("aliases/")
            .unwrap_or(&r.new_alias_id);
        let renamed = self
            .catalog
            .rename_alias(name, new_name.to_owned())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::alias(renamed)))
    }

    async fn delete_alias(
        &self,
        req: Request<pb::DeleteAliasRequest>,
    ) -> Reply<pb::DeleteAliasResponse> {
        self.auth.require_trusted(&req)?;
        let r = req.into_inner();
        let name = names::alias("name", &r.name)?.to_owned();
        self.catalog
            .delete_alias(name)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DeleteAliasResponse {}))
    }
}
