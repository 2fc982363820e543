//! The service-account controller: every namespace has a ServiceAccount called
//! `default`, the identity of its pods that name no other. It is created when the
//! namespace appears and again if someone deletes it, as Kubernetes'
//! serviceaccounts-controller does.

use async_trait::async_trait;

use super::{Action, Cache, Context, Error, Reconciler};
use crate::api::registry::{ApiError, ObjectRef};
use crate::model::{DEFAULT_SERVICE_ACCOUNT, Kind, Object, ObjectMeta, ServiceAccount};

pub struct ServiceAccountController;

#[async_trait]
impl Reconciler for ServiceAccountController {
    const NAME: &'static str = "serviceaccount-controller";
    const KIND: Kind = Kind::Namespace;
    const RELATED: &'static [Kind] = &[Kind::ServiceAccount];

    /// A change to a namespace's `default` account (its deletion) concerns the
    /// namespace.
    fn owners_of(&self, object: &Object, _cache: &Cache) -> Vec<ObjectRef> {
        let meta = object.metadata();
        match (&meta.namespace, meta.name.as_str()) {
            (Some(namespace), DEFAULT_SERVICE_ACCOUNT) => vec![ObjectRef {
                kind: Kind::Namespace,
                namespace: None,
                name: namespace.clone(),
            }],
            _ => Vec::new(),
        }
    }

    async fn reconcile(&self, object: &Object, ctx: &Context) -> Result<Action, Error> {
        let meta = object.metadata();
        // A namespace being deleted gets nothing new.
        if meta.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let namespace = meta.name.clone();
        let reference = ObjectRef {
            kind: Kind::ServiceAccount,
            namespace: Some(namespace.clone()),
            name: DEFAULT_SERVICE_ACCOUNT.into(),
        };
        match ctx.registry.get(&reference).await {
            Ok(_) => return Ok(Action::await_change()),
            Err(ApiError::NotFound { .. }) => {}
            Err(source) => {
                return Err(Error::Read {
                    kind: Kind::ServiceAccount,
                    namespace,
                    source,
                });
            }
        }
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: DEFAULT_SERVICE_ACCOUNT.into(),
                namespace: Some(namespace),
                ..Default::default()
            },
            ..Default::default()
        };
        ctx.apply::<ServiceAccount>(Object::ServiceAccount(account))
            .await?;
        Ok(Action::await_change())
    }
}
