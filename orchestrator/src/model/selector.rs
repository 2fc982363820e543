//! Selecting objects: label selectors as objects carry them (`spec.selector`), as
//! kubectl's `-l` writes them, and kubectl's `--field-selector`.
//!
//! Matching follows Kubernetes: `NotIn` and `!=` also match objects without the key,
//! and an empty selector matches everything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Object;
use super::object::{Kind, enum_name};
use super::validation::{FieldErrors, Format, Path, check_format, check_labels};

/// A label selector in an object (`matchLabels` and `matchExpressions`, all of which
/// must hold).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelectorRequirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

pub(crate) fn validate_label_selector(
    errors: &mut FieldErrors,
    path: &Path,
    selector: &LabelSelector,
) {
    check_labels(errors, &path.field("matchLabels"), &selector.match_labels);
    for (i, requirement) in selector.match_expressions.iter().enumerate() {
        let path = path.field("matchExpressions").index(i);
        check_format(
            errors,
            &path.field("key"),
            &requirement.key,
            Format::QualifiedName,
        );
        let needs_values = matches!(
            requirement.operator,
            SelectorOperator::In | SelectorOperator::NotIn
        );
        check_operator_values(
            errors,
            &path,
            &enum_name(&requirement.operator),
            needs_values,
            &requirement.values,
        );
        for (j, value) in requirement.values.iter().enumerate() {
            check_format(
                errors,
                &path.field("values").index(j),
                value,
                Format::LabelValue,
            );
        }
    }
}

/// Set operators (`In`, `NotIn`) need values to compare with; existence operators
/// take none.
pub(crate) fn check_operator_values(
    errors: &mut FieldErrors,
    path: &Path,
    operator: &str,
    needs_values: bool,
    values: &[String],
) {
    match (needs_values, values.is_empty()) {
        (true, true) => errors.push(
            path.field("values"),
            format!("required when the operator is {operator}"),
        ),
        (false, false) => errors.push(
            path.field("values"),
            format!("must be empty when the operator is {operator}"),
        ),
        _ => {}
    }
}

/// A label selector in kubectl's `-l` syntax: `app=web,tier!=db,env in (a,b),env
/// notin (c),canary,!legacy` (also `==`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<LabelSelectorRequirement>,
}

impl Selector {
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn parse(text: &str) -> Result<Selector, String> {
        let invalid = |reason: String| format!("invalid label selector {text:?}: {reason}");
        if text.trim().is_empty() {
            return Ok(Selector::everything());
        }
        let requirements = split_outside_parentheses(text)
            .map_err(invalid)?
            .into_iter()
            .map(|part| parse_requirement(part.trim()).map_err(invalid))
            .collect::<Result<_, _>>()?;
        Ok(Selector { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl From<&LabelSelector> for Selector {
    fn from(selector: &LabelSelector) -> Self {
        let equalities =
            selector
                .match_labels
                .iter()
                .map(|(key, value)| LabelSelectorRequirement {
                    key: key.clone(),
                    operator: SelectorOperator::In,
                    values: vec![value.clone()],
                });
        Selector {
            requirements: equalities
                .chain(selector.match_expressions.iter().cloned())
                .collect(),
        }
    }
}

/// Splits at the commas that separate requirements, not those inside `in (a,b)`.
fn split_outside_parentheses(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced \")\"")?,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced \"(\"".to_string());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_requirement(part: &str) -> Result<LabelSelectorRequirement, String> {
    if part.is_empty() {
        return Err("empty requirement".to_string());
    }
    let requirement = if let Some(key) = part.strip_prefix('!') {
        LabelSelectorRequirement {
            key: key.trim().to_string(),
            operator: SelectorOperator::DoesNotExist,
            values: vec![],
        }
    } else if let Some(at) = part.find(['=', '!']) {
        let (key, rest) = part.split_at(at);
        let (operator, value) = if let Some(value) = rest.strip_prefix("!=") {
            (SelectorOperator::NotIn, value)
        } else if let Some(value) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
            (SelectorOperator::In, value)
        } else {
            return Err(format!("expected \"!=\" in {part:?}"));
        };
        LabelSelectorRequirement {
            key: key.trim().to_string(),
            operator,
            values: vec![value.trim().to_string()],
        }
    } else if let Some((key, rest)) = part.split_once(char::is_whitespace) {
        let rest = rest.trim_start();
        let word_len = rest
            .find(|c: char| c == '(' || c.is_whitespace())
            .unwrap_or(rest.len());
        let (word, values) = rest.split_at(word_len);
        let operator = match word {
            "in" => SelectorOperator::In,
            "notin" => SelectorOperator::NotIn,
            _ => return Err(format!("unknown operator {word:?} (expected in or notin)")),
        };
        let values = values
            .trim()
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(|| format!("expected a list like (a,b) after {word}"))?;
        LabelSelectorRequirement {
            key: key.to_string(),
            operator,
            values: values.split(',').map(|v| v.trim().to_string()).collect(),
        }
    } else {
        LabelSelectorRequirement {
            key: part.to_string(),
            operator: SelectorOperator::Exists,
            values: vec![],
        }
    };
    if !Format::QualifiedName.is_valid(&requirement.key) {
        return Err(Format::QualifiedName.reason(&requirement.key));
    }
    if let Some(value) = requirement
        .values
        .iter()
        .find(|v| !Format::LabelValue.is_valid(v))
    {
        return Err(Format::LabelValue.reason(value));
    }
    Ok(requirement)
}

/// kubectl's `--field-selector`: `metadata.name=x,spec.nodeName!=y`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldRequirement {
    field: Field,
    equal: bool,
    value: String,
}

/// The fields a field selector can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
    /// Pods only; other kinds have none (an empty value).
    NodeName,
    /// Pods only; other kinds have none (an empty value).
    Phase,
}

const FIELDS: [(&str, Field); 4] = [
    ("metadata.name", Field::Name),
    ("metadata.namespace", Field::Namespace),
    ("spec.nodeName", Field::NodeName),
    ("status.phase", Field::Phase),
];

impl FieldSelector {
    pub fn everything() -> FieldSelector {
        FieldSelector::default()
    }

    pub fn parse(text: &str) -> Result<FieldSelector, String> {
        if text.trim().is_empty() {
            return Ok(FieldSelector::everything());
        }
        let requirements = text
            .split(',')
            .map(|part| {
                parse_field_requirement(part.trim())
                    .map_err(|reason| format!("invalid field selector {text:?}: {reason}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(FieldSelector { requirements })
    }

    pub fn matches(&self, object: &Object) -> bool {
        self.requirements
            .iter()
            .all(|r| (field_value(object, r.field) == r.value) == r.equal)
    }

    /// Refuses fields that `kind` does not have (spec.nodeName and status.phase
    /// are Pods' only), as the Kubernetes API server does.
    pub fn check_kind(&self, kind: Kind) -> Result<(), String> {
        match self
            .requirements
            .iter()
            .find(|r| kind != Kind::Pod && matches!(r.field, Field::NodeName | Field::Phase))
        {
            Some(r) => {
                let name = FIELDS
                    .iter()
                    .find(|(_, f)| *f == r.field)
                    .map_or("", |(n, _)| n);
                Err(format!(
                    "field {name:?} is not supported for {kind} (supported: metadata.name, metadata.namespace)"
                ))
            }
            None => Ok(()),
        }
    }
}

fn parse_field_requirement(part: &str) -> Result<FieldRequirement, String> {
    let (field, equal, value) = if let Some((field, value)) = part.split_once("!=") {
        (field, false, value)
    } else if let Some((field, value)) = part.split_once('=') {
        (field, true, value.strip_prefix('=').unwrap_or(value))
    } else {
        return Err(format!(
            "{part:?} is not of the form field=value or field!=value"
        ));
    };
    let field = field.trim();
    let supported = FIELDS
        .iter()
        .find(|(name, _)| *name == field)
        .ok_or_else(|| {
            let names: Vec<&str> = FIELDS.iter().map(|(name, _)| *name).collect();
            format!(
                "field {field:?} is not supported (supported: {})",
                names.join(", ")
            )
        })?;
    Ok(FieldRequirement {
        field: supported.1,
        equal,
        value: value.trim().to_string(),
    })
}

fn field_value(object: &Object, field: Field) -> String {
    let meta = object.metadata();
    match (field, object) {
        (Field::Name, _) => meta.name.clone(),
        (Field::Namespace, _) => meta.namespace.clone().unwrap_or_default(),
        (Field::NodeName, Object::Pod(pod)) => pod.spec.node_name.clone().unwrap_or_default(),
        (Field::Phase, Object::Pod(pod)) => {
            pod.status.phase.as_ref().map(enum_name).unwrap_or_default()
        }
        (Field::NodeName | Field::Phase, _) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectMeta, Pod, PodPhase, PodSpec, PodStatus};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn select(selector: &str, pairs: &[(&str, &str)]) -> bool {
        Selector::parse(selector)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(&labels(pairs))
    }

    #[test]
    fn equality_and_inequality() {
        assert!(select("app=web", &[("app", "web")]));
        assert!(select("app==web", &[("app", "web"), ("tier", "db")]));
        assert!(!select("app=web", &[("app", "api")]));
        assert!(!select("app=web", &[]));
        assert!(select("tier!=db", &[("tier", "web")]));
        // != matches objects without the key, as in Kubernetes.
        assert!(select("tier!=db", &[]));
        assert!(!select("tier!=db", &[("tier", "db")]));
        assert!(select("app=", &[("app", "")]));
    }

    #[test]
    fn set_based() {
        let s = "app=web, env in (a, b),tier notin (c),canary,!legacy";
        assert!(select(s, &[("app", "web"), ("env", "b"), ("canary", "")]));
        assert!(!select(s, &[("app", "web"), ("env", "x"), ("canary", "")]));
        assert!(!select(
            s,
            &[("app", "web"), ("env", "a"), ("tier", "c"), ("canary", "")]
        ));
        assert!(!select(s, &[("app", "web"), ("env", "a")]));
        assert!(!select(
            s,
            &[
                ("app", "web"),
                ("env", "a"),
                ("canary", "1"),
                ("legacy", "")
            ]
        ));
        // notin matches objects without the key.
        assert!(select("env notin (prod)", &[]));
        assert!(!select("env in (prod)", &[]));
        assert!(select("env in(prod)", &[("env", "prod")]));
    }

    #[test]
    fn empty_selectors_match_everything() {
        assert!(select("", &[("a", "b")]));
        assert!(Selector::everything().matches(&labels(&[])));
        assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
        assert!(LabelSelector::default().is_empty());
    }

    #[test]
    fn label_selector_objects() {
        let selector = LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![
                LabelSelectorRequirement {
                    key: "env".into(),
                    operator: SelectorOperator::NotIn,
                    values: vec!["prod".into()],
                },
                LabelSelectorRequirement {
                    key: "gpu".into(),
                    operator: SelectorOperator::DoesNotExist,
                    values: vec![],
                },
            ],
        };
        for pairs in [&[("app", "web")][..], &[("app", "web"), ("env", "dev")]] {
            assert!(selector.matches(&labels(pairs)));
            assert!(Selector::from(&selector).matches(&labels(pairs)));
        }
        for pairs in [
            &[("app", "web"), ("env", "prod")][..],
            &[("app", "web"), ("gpu", "1")],
            &[],
        ] {
            assert!(!selector.matches(&labels(pairs)));
            assert!(!Selector::from(&selector).matches(&labels(pairs)));
        }
    }

    #[test]
    fn bad_label_selectors() {
        let cases = [
            ("app=web,,tier=db", "empty requirement"),
            ("env in (a,b", "unbalanced \"(\""),
            ("env in a,b)", "unbalanced \")\""),
            (
                "env inn (a)",
                "unknown operator \"inn\" (expected in or notin)",
            ),
            ("env in a", "expected a list like (a,b) after in"),
            ("app!web", "expected \"!=\" in \"app!web\""),
            (
                "app=we b",
                "\"we b\" is not a valid label value (at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)",
            ),
            (
                "-app=web",
                "\"-app\" is not a valid key (an optional DNS-1123 subdomain and '/', then at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)",
            ),
            (
                "!",
                "\"\" is not a valid key (an optional DNS-1123 subdomain and '/', then at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)",
            ),
        ];
        for (selector, reason) in cases {
            assert_eq!(
                Selector::parse(selector),
                Err(format!("invalid label selector {selector:?}: {reason}")),
            );
        }
    }

    fn pod(name: &str, namespace: &str, node: Option<&str>, phase: Option<PodPhase>) -> Object {
        Object::Pod(Pod {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            spec: PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            },
            status: PodStatus {
                phase,
                ..Default::default()
            },
        })
    }

    #[test]
    fn field_selectors() {
        let running = pod("web-1", "default", Some("node-a"), Some(PodPhase::Running));
        let pending = pod("web-2", "prod", None, Some(PodPhase::Pending));
        let matches = |s: &str, o: &Object| {
            FieldSelector::parse(s)
                .unwrap_or_else(|e| panic!("{e}"))
                .matches(o)
        };
        assert!(matches("metadata.name=web-1", &running));
        assert!(!matches("metadata.name=web-1", &pending));
        assert!(matches("metadata.namespace==prod", &pending));
        assert!(matches(
            "spec.nodeName=node-a,status.phase=Running",
            &running
        ));
        assert!(matches("spec.nodeName!=node-a", &pending));
        assert!(matches("spec.nodeName=", &pending));
        assert!(matches("status.phase!=Running", &pending));
        assert!(matches("", &pending));
        assert!(FieldSelector::everything().matches(&running));
        // Kinds without the field have an empty value.
        let namespace = Object::Namespace(crate::model::Namespace {
            metadata: ObjectMeta {
                name: "prod".into(),
                ..Default::default()
            },
            ..Default::default()
        });
        assert!(matches("metadata.name=prod,spec.nodeName=", &namespace));
        assert!(!matches("status.phase=Running", &namespace));
    }

    #[test]
    fn bad_field_selectors() {
        assert_eq!(
            FieldSelector::parse("metadata.name=x,spec.restartPolicy=Always"),
            Err(
                "invalid field selector \"metadata.name=x,spec.restartPolicy=Always\": field \
                 \"spec.restartPolicy\" is not supported (supported: metadata.name, \
                 metadata.namespace, spec.nodeName, status.phase)"
                    .to_string()
            )
        );
        assert_eq!(
            FieldSelector::parse("metadata.name"),
            Err(
                "invalid field selector \"metadata.name\": \"metadata.name\" is not of the form \
                 field=value or field!=value"
                    .to_string()
            )
        );
    }
}
