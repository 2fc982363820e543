//! The configuration kinds of core/v1: ConfigMaps and Secrets, which pods read as
//! environment variables or mounted files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::object::Resource;
use super::validation::{FieldErrors, Format, Path, check_immutable, check_keys};
use super::{ByteString, ObjectMeta};

/// Configuration as text (`data`) or bytes (`binaryData`), keyed by file-name-like
/// keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMap {
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, ByteString>,
    /// Once true, the data can no longer change (and this cannot go back to false).
    pub immutable: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Secret {
    pub metadata: ObjectMeta,
    /// "Opaque" unless it follows one of Kubernetes's conventions
    /// ("kubernetes.io/tls", ...).
    pub r#type: Option<String>,
    /// Base64 on the wire, bytes here.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, ByteString>,
    /// Write-only plain-text data: defaulting moves it into `data`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    pub immutable: Option<bool>,
}

impl Resource for ConfigMap {
    fn validate(&self, errors: &mut FieldErrors) {
        check_keys(
            errors,
            &Path::root().field("data"),
            &self.data,
            Format::ConfigKey,
        );
        check_keys(
            errors,
            &Path::root().field("binaryData"),
            &self.binary_data,
            Format::ConfigKey,
        );
        for key in self
            .binary_data
            .keys()
            .filter(|k| self.data.contains_key(*k))
        {
            errors.push(
                Path::root().field("binaryData").key(key),
                "duplicate of a key in data",
            );
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        if old.immutable == Some(true) {
            check_immutable(errors, &Path::root().field("data"), &self.data, &old.data);
            check_immutable(
                errors,
                &Path::root().field("binaryData"),
                &self.binary_data,
                &old.binary_data,
            );
            check_immutable(
                errors,
                &Path::root().field("immutable"),
                &self.immutable,
                &old.immutable,
            );
        }
    }

    fn spec_value(&self) -> Value {
        json!({ "data": self.data, "binaryData": self.binary_data })
    }
}

impl Resource for Secret {
    fn apply_defaults(&mut self) {
        self.r#type.get_or_insert_with(|| "Opaque".to_string());
        // stringData wins over data for the same key, as in Kubernetes.
        for (key, value) in std::mem::take(&mut self.string_data) {
            self.data.insert(key, ByteString(value.into_bytes()));
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        check_keys(
            errors,
            &Path::root().field("data"),
            &self.data,
            Format::ConfigKey,
        );
        check_keys(
            errors,
            &Path::root().field("stringData"),
            &self.string_data,
            Format::ConfigKey,
        );
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        // Consumers rely on a Secret's type; unset means "as stored".
        if self.r#type.is_some() {
            let path = Path::root().field("type");
            check_immutable(errors, &path, &self.r#type, &old.r#type);
        }
        if old.immutable == Some(true) {
            check_immutable(errors, &Path::root().field("data"), &self.data, &old.data);
            check_immutable(
                errors,
                &Path::root().field("immutable"),
                &self.immutable,
                &old.immutable,
            );
        }
    }

    fn spec_value(&self) -> Value {
        json!({ "data": self.data })
    }
}
