//! Validation results and the checks every kind shares: field paths, name and label
//! formats, ports, ranges, uniqueness and "exactly one of" rules.
//!
//! A check never stops at the first problem: it pushes a [`FieldError`] and returns, so
//! a user sees every mistake of a document at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// One problem with an object: where (`spec.containers[0].image`) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, dotted, with list indexes and map keys in brackets; empty when
    /// the problem is the whole object.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Every problem found with an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct FieldErrors(pub Vec<FieldError>);

fn lines(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(FieldError::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl FieldErrors {
    /// A single error.
    pub fn one(path: impl fmt::Display, reason: impl Into<String>) -> Self {
        let mut errors = Self::default();
        errors.push(path, reason);
        errors
    }

    pub fn push(&mut self, path: impl fmt::Display, reason: impl Into<String>) {
        self.0.push(FieldError {
            path: path.to_string(),
            reason: reason.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when no error was pushed.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// A field path under construction: `Path::root().field("spec").index(0)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Path(String);

impl Path {
    pub(crate) fn root() -> Self {
        Self::default()
    }

    pub(crate) fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_string())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    pub(crate) fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key}]", self.0))
    }

    /// The last dotted segment (`labels` for `metadata.labels`).
    pub(crate) fn last_field(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or_default()
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The string formats Kubernetes requires of names, keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Most object names, and DNS names in general.
    Dns1123Subdomain,
    /// Namespace, container, volume and host names.
    Dns1123Label,
    /// Service names: they become DNS labels that must not look like numbers.
    Rfc1035Label,
    /// Port names (IANA_SVC_NAME).
    PortName,
    /// Label and annotation keys: an optional DNS subdomain prefix and '/', then a name.
    QualifiedName,
    LabelValue,
    /// ConfigMap and Secret keys (they become file names).
    ConfigKey,
}

impl Format {
    pub(crate) fn is_valid(self, s: &str) -> bool {
        match self {
            Format::Dns1123Subdomain => {
                s.len() <= 253
                    && s.split('.')
                        .all(|part| is_word(part, 253, lower_alnum, dash))
            }
            Format::Dns1123Label => is_word(s, 63, lower_alnum, dash),
            Format::Rfc1035Label => {
                is_word(s, 63, lower_alnum, dash) && s.starts_with(|c: char| c.is_ascii_lowercase())
            }
            Format::PortName => {
                is_word(s, 15, lower_alnum, dash)
                    && !s.contains("--")
                    && s.chars().any(|c| c.is_ascii_lowercase())
            }
            Format::QualifiedName => {
                let (prefix, name) = match s.split_once('/') {
                    Some((prefix, name)) => (Some(prefix), name),
                    None => (None, s),
                };
                prefix.is_none_or(|prefix| Format::Dns1123Subdomain.is_valid(prefix))
                    && is_word(name, 63, alnum, name_punctuation)
            }
            Format::LabelValue => s.is_empty() || is_word(s, 63, alnum, name_punctuation),
            Format::ConfigKey => {
                !s.is_empty()
                    && s.len() <= 253
                    && s != "."
                    && s != ".."
                    && s.chars().all(|c| alnum(c) || name_punctuation(c))
            }
        }
    }

    fn description(self) -> &'static str {
        match self {
            Format::Dns1123Subdomain => {
                "a valid DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and \
                 ending with a letter or digit, at most 253 characters)"
            }
            Format::Dns1123Label => {
                "a valid DNS-1123 label (lowercase letters, digits and '-', starting and ending \
                 with a letter or digit, at most 63 characters)"
            }
            Format::Rfc1035Label => {
                "a valid RFC 1035 label (lowercase letters, digits and '-', starting with a \
                 letter and ending with a letter or digit, at most 63 characters)"
            }
            Format::PortName => {
                "a valid port name (lowercase letters, digits and '-', at least one letter, no \
                 '--', starting and ending with a letter or digit, at most 15 characters)"
            }
            Format::QualifiedName => {
                "a valid key (an optional DNS-1123 subdomain and '/', then at most 63 letters, \
                 digits, '-', '_' and '.', starting and ending with a letter or digit)"
            }
            Format::LabelValue => {
                "a valid label value (at most 63 letters, digits, '-', '_' and '.', starting and \
                 ending with a letter or digit)"
            }
            Format::ConfigKey => {
                "a valid config key (letters, digits, '-', '_' and '.', at most 253 characters)"
            }
        }
    }

    /// The reason given when `value` is not in this format.
    pub(crate) fn reason(self, value: &str) -> String {
        format!("{value:?} is not {}", self.description())
    }
}

fn lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn dash(c: char) -> bool {
    c == '-'
}

fn name_punctuation(c: char) -> bool {
    matches!(c, '-' | '_' | '.')
}

/// `s` is 1 to `max` characters of `edge` and `inner` ones, starting and ending with
/// an `edge` one.
fn is_word(s: &str, max: usize, edge: fn(char) -> bool, inner: fn(char) -> bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(edge)
        && s.ends_with(edge)
        && s.chars().all(|c| edge(c) || inner(c))
}

/// Checks `value` against `format`.
pub(crate) fn check_format(errors: &mut FieldErrors, path: &Path, value: &str, format: Format) {
    if !format.is_valid(value) {
        errors.push(path, format.reason(value));
    }
}

/// Checks a required `value` against `format`.
pub(crate) fn check_name(errors: &mut FieldErrors, path: &Path, value: &str, format: Format) {
    if value.is_empty() {
        errors.push(path, "required");
    } else {
        check_format(errors, path, value, format);
    }
}

/// Checks an optional string: when set it must be in `format`.
pub(crate) fn check_optional(
    errors: &mut FieldErrors,
    path: &Path,
    value: Option<&str>,
    format: Format,
) {
    if let Some(value) = value {
        check_format(errors, path, value, format);
    }
}

/// Checks a label map (labels, selectors, node selectors): qualified-name keys, label
/// values.
pub(crate) fn check_labels(
    errors: &mut FieldErrors,
    path: &Path,
    labels: &BTreeMap<String, String>,
) {
    for (key, value) in labels {
        let path = path.key(key);
        check_format(errors, &path, key, Format::QualifiedName);
        check_format(errors, &path, value, Format::LabelValue);
    }
}

/// Checks the keys of a map against `format`.
pub(crate) fn check_keys<V>(
    errors: &mut FieldErrors,
    path: &Path,
    map: &BTreeMap<String, V>,
    format: Format,
) {
    for key in map.keys() {
        check_format(errors, &path.key(key), key, format);
    }
}

pub(crate) fn check_port(errors: &mut FieldErrors, path: &Path, port: i32) {
    if !(1..=65535).contains(&port) {
        errors.push(path, format!("{port} is not a valid port (1-65535)"));
    }
}

/// Checks an optional number against a lower bound.
pub(crate) fn check_min(
    errors: &mut FieldErrors,
    path: &Path,
    value: Option<impl Into<i64>>,
    min: i64,
) {
    if let Some(value) = value.map(Into::into)
        && value < min
    {
        errors.push(
            path,
            format!("{value} must be greater than or equal to {min}"),
        );
    }
}

/// Checks an optional number against an inclusive range.
pub(crate) fn check_range(
    errors: &mut FieldErrors,
    path: &Path,
    value: Option<impl Into<i64>>,
    min: i64,
    max: i64,
) {
    if let Some(value) = value.map(Into::into)
        && !(min..=max).contains(&value)
    {
        errors.push(path, format!("{value} must be between {min} and {max}"));
    }
}

/// Reports every entry whose key appeared earlier; `key` is how the reason names it
/// (`name "web"`, `port 80/TCP`).
pub(crate) fn check_unique(
    errors: &mut FieldErrors,
    entries: impl IntoIterator<Item = (Path, String)>,
) {
    let mut seen = BTreeSet::new();
    for (path, key) in entries {
        if !seen.insert(key.clone()) {
            errors.push(&path, format!("duplicate {key}"));
        }
    }
}

/// Exactly one of the named alternatives must be set (volume sources, probe handlers).
pub(crate) fn check_exactly_one(
    errors: &mut FieldErrors,
    path: &Path,
    alternatives: &[(&str, bool)],
) {
    let set = alternatives.iter().filter(|(_, set)| *set).count();
    if set != 1 {
        let names: Vec<&str> = alternatives.iter().map(|(name, _)| *name).collect();
        let (last, rest) = names.split_last().unwrap_or((&"", &[]));
        errors.push(
            path,
            format!(
                "exactly one of {} or {last} must be set, found {set}",
                rest.join(", ")
            ),
        );
    }
}

/// Checks that a required string is set.
pub(crate) fn check_required(errors: &mut FieldErrors, path: &Path, value: &str) {
    if value.is_empty() {
        errors.push(path, "required");
    }
}

pub(crate) fn check_ip(errors: &mut FieldErrors, path: &Path, value: &str) {
    if value.parse::<IpAddr>().is_err() {
        errors.push(path, format!("{value:?} is not a valid IP address"));
    }
}

/// An update may not change a field once it is set.
pub(crate) fn check_immutable<T: PartialEq>(
    errors: &mut FieldErrors,
    path: &Path,
    new: &T,
    old: &T,
) {
    if new != old {
        errors.push(path, "field is immutable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let cases: &[(Format, &str, bool)] = &[
            (Format::Dns1123Subdomain, "web.example-1", true),
            (Format::Dns1123Subdomain, "Web_App", false),
            (Format::Dns1123Subdomain, "a..b", false),
            (Format::Dns1123Subdomain, &"a".repeat(254), false),
            (Format::Dns1123Label, "web-1", true),
            (Format::Dns1123Label, "web.1", false),
            (Format::Dns1123Label, &"a".repeat(64), false),
            (Format::Dns1123Label, "-web", false),
            (Format::Rfc1035Label, "web", true),
            (Format::Rfc1035Label, "1web", false),
            (Format::PortName, "http-alt", true),
            (Format::PortName, "http--alt", false),
            (Format::PortName, "8080", false),
            (Format::PortName, "a-very-long-port-name", false),
            (Format::QualifiedName, "app.kubernetes.io/name", true),
            (Format::QualifiedName, "App_Name.x", true),
            (Format::QualifiedName, "/name", false),
            (Format::QualifiedName, "Example.com/name", false),
            (Format::QualifiedName, "name-", false),
            (Format::LabelValue, "", true),
            (Format::LabelValue, "v1.2_3", true),
            (Format::LabelValue, "v1 ", false),
            (Format::ConfigKey, "app.properties", true),
            (Format::ConfigKey, "..", false),
            (Format::ConfigKey, "a/b", false),
        ];
        for (format, value, valid) in cases {
            assert_eq!(format.is_valid(value), *valid, "{format:?} {value:?}");
        }
    }

    #[test]
    fn paths_and_display() {
        let path = Path::root()
            .field("metadata")
            .field("labels")
            .key("app.kubernetes.io/name");
        assert_eq!(path.to_string(), "metadata.labels[app.kubernetes.io/name]");
        assert_eq!(
            Path::root()
                .field("spec")
                .field("ports")
                .index(1)
                .to_string(),
            "spec.ports[1]"
        );
        assert_eq!(
            Path::root().field("spec").field("labels").last_field(),
            "labels"
        );
        let mut errors = FieldErrors::one("", "expected an object");
        errors.push("spec.replicas", "required");
        assert_eq!(
            errors.to_string(),
            "expected an object\nspec.replicas: required"
        );
    }

    #[test]
    fn exactly_one_and_unique() {
        let mut errors = FieldErrors::default();
        let path = Path::root().field("probe");
        check_exactly_one(
            &mut errors,
            &path,
            &[("exec", false), ("httpGet", true), ("tcpSocket", true)],
        );
        check_unique(
            &mut errors,
            ["a", "b", "a"]
                .iter()
                .enumerate()
                .map(|(i, n)| (Path::root().index(i), format!("name {n:?}"))),
        );
        assert_eq!(
            errors.to_string(),
            "probe: exactly one of exec, httpGet or tcpSocket must be set, found 2\n[2]: duplicate name \"a\""
        );
    }
}
