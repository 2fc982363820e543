//! Manifests: the YAML or JSON files `skiff apply -f` reads, from files, directories
//! and stdin, turned into validated objects; and `skiff get -o yaml` output.
//!
//! Loading reports the problems of every document, not just the first, and returns
//! no objects at all if there is one, so nothing is applied from a broken set.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{FieldError, Object};

/// One object of a manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The file as the user named it, or "<stdin>".
    pub source: String,
    /// 1-based, counting empty documents too, so it matches what the user sees.
    pub index: usize,
    pub object: Object,
}

/// A problem with a manifest: with one of its documents, or with the whole file
/// (unreadable, no objects).
///
/// Display is hand-written: thiserror would take the `source` field for the error's
/// cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub source: String,
    pub index: Option<usize>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(index) => write!(f, "{} doc {index}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for ManifestError {}

/// The file names a directory contributes.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Loads the objects of `paths`, as typed by the user ("-" reads `stdin`). A
/// directory contributes its *.yaml, *.yml and *.json files in name order, and its
/// subdirectories' when `recursive`.
pub fn load(
    paths: &[PathBuf],
    recursive: bool,
    stdin: &mut dyn Read,
) -> Result<Vec<Document>, Vec<ManifestError>> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let files = if path.as_os_str() == "-" {
            let mut text = String::new();
            vec![match stdin.read_to_string(&mut text) {
                Ok(_) => Ok(("<stdin>".to_string(), text)),
                Err(e) => Err(unreadable("<stdin>", e)),
            }]
        } else {
            read_path(path, recursive)
        };
        for file in files {
            match file
                .map_err(|e| vec![e])
                .and_then(|(source, text)| parse(&source, &text))
            {
                Ok(parsed) => documents.extend(parsed),
                Err(e) => errors.extend(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(errors)
    }
}

/// The (source, text) of a file, or of every manifest file in a directory.
fn read_path(path: &Path, recursive: bool) -> Vec<Result<(String, String), ManifestError>> {
    let source = path.display().to_string();
    match fs::metadata(path) {
        Err(e) => vec![Err(unreadable(&source, e))],
        Ok(metadata) if !metadata.is_dir() => vec![read_file(path)],
        Ok(_) => {
            let mut files = Vec::new();
            manifest_files(path, recursive, &mut files);
            if files.is_empty() {
                let message = "no manifest files (*.yaml, *.yml, *.json)".to_string();
                return vec![Err(file_error(&source, message))];
            }
            files
                .into_iter()
                .map(|file| file.and_then(|file| read_file(&file)))
                .collect()
        }
    }
}

fn read_file(path: &Path) -> Result<(String, String), ManifestError> {
    let source = path.display().to_string();
    match fs::read_to_string(path) {
        Ok(text) => Ok((source, text)),
        Err(e) => Err(unreadable(&source, e)),
    }
}

/// Collects the manifest files under `dir`, in name order (and the directories that
/// cannot be listed).
fn manifest_files(dir: &Path, recursive: bool, files: &mut Vec<Result<PathBuf, ManifestError>>) {
    let entries = fs::read_dir(dir).and_then(|entries| entries.collect::<Result<Vec<_>, _>>());
    let mut entries = match entries {
        Ok(entries) => entries,
        Err(e) => {
            files.push(Err(unreadable(&dir.display().to_string(), e)));
            return;
        }
    };
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            if recursive {
                manifest_files(&path, recursive, files);
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e))
        {
            files.push(Ok(path));
        }
    }
}

fn unreadable(source: &str, error: std::io::Error) -> ManifestError {
    file_error(source, format!("cannot read: {error}"))
}

fn file_error(source: &str, message: String) -> ManifestError {
    ManifestError {
        source: source.to_string(),
        index: None,
        message,
    }
}

/// Parses the objects of one manifest: YAML documents separated by `---` lines (empty
/// ones skipped, but counted), or JSON (objects one after the other). A `kind: List`
/// contributes its `items`.
pub fn parse(source: &str, text: &str) -> Result<Vec<Document>, Vec<ManifestError>> {
    // kubectl's rule: JSON if it starts with a brace.
    let values = if text.trim_start().starts_with('{') {
        json_values(text)
    } else {
        yaml_values(text)
    };
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    let mut error = |index, message| {
        errors.push(ManifestError {
            source: source.to_string(),
            index: Some(index),
            message,
        })
    };
    for (index, value) in values {
        let value = match value {
            Ok(value) => value,
            Err(message) => {
                error(index, message);
                continue;
            }
        };
        for object in objects(value) {
            match object {
                Ok(object) => documents.push(Document {
                    source: source.to_string(),
                    index,
                    object,
                }),
                Err(field_errors) => field_errors
                    .into_iter()
                    .for_each(|e| error(index, e.to_string())),
            }
        }
    }
    if documents.is_empty() && errors.is_empty() {
        errors.push(file_error(source, "no objects found".to_string()));
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(errors)
    }
}

/// The objects of one document: itself, or the items of a List (whose errors are
/// prefixed with `items[i]`).
fn objects(value: Value) -> Vec<Result<Object, Vec<FieldError>>> {
    let items = match value {
        Value::Object(mut fields) if fields.get("kind").and_then(Value::as_str) == Some("List") => {
            match fields.remove("items") {
                Some(Value::Array(items)) => items,
                _ => {
                    return vec![Err(vec![FieldError {
                        path: "items".to_string(),
                        reason: "expected a list of objects".to_string(),
                    }])];
                }
            }
        }
        value => return vec![Object::from_value(value).map_err(|e| e.0)],
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            Object::from_value(item).map_err(|errors| {
                let prefix = format!("items[{i}]");
                errors
                    .0
                    .into_iter()
                    .map(|e| FieldError {
                        path: if e.path.is_empty() {
                            prefix.clone()
                        } else {
                            format!("{prefix}.{}", e.path)
                        },
                        reason: e.reason,
                    })
                    .collect()
            })
        })
        .collect()
}

/// The JSON values of a stream of objects, numbered from 1. A syntax error ends the
/// stream: nothing after it can be trusted.
fn json_values(text: &str) -> Vec<(usize, Result<Value, String>)> {
    let mut values = Vec::new();
    for (i, value) in serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .enumerate()
    {
        let failed = value.is_err();
        values.push((i + 1, value.map_err(|e| e.to_string())));
        if failed {
            break;
        }
    }
    values
}

/// The YAML documents of a stream, numbered from 1, empty ones left out.
fn yaml_values(text: &str) -> Vec<(usize, Result<Value, String>)> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        // YAML 1.1, as Kubernetes reads it: `defaultMode: 0644` is octal.
        legacy_octal_numbers: true,
    };
    split_yaml(text)
        .into_iter()
        .enumerate()
        .filter_map(|(i, (lines_before, document))| {
            match serde_saphyr::from_str_with_options::<Option<Value>>(document, options.clone()) {
                Ok(None) => None,
                Ok(Some(value)) => Some((i + 1, Ok(value))),
                Err(e) => {
                    let mut render =
                        serde_saphyr::RenderOptions::new(&serde_saphyr::UserMessageFormatter);
                    render.snippets = serde_saphyr::SnippetMode::Off;
                    // Line numbers count from the top of the file, not the document.
                    render.line_offset = lines_before as u64;
                    Some((i + 1, Err(e.render_with_options(render))))
                }
            }
        })
        .collect()
}

/// Splits a YAML stream at its `---` lines, as kubectl does, so that each document
/// parses on its own and one broken document does not hide the problems of the
/// others. Returns each document with the number of lines before it. Comments, blank
/// lines and directives before the first `---` belong to the first document.
fn split_yaml(text: &str) -> Vec<(usize, &str)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 0, 0);
    let mut has_content = false;
    for (line_number, line) in text.split_inclusive('\n').enumerate() {
        let separator = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace));
        if separator {
            if has_content {
                documents.push((start_line, &text[start..offset]));
                (start, start_line) = (offset, line_number);
            }
            has_content = true;
        } else {
            let trimmed = line.trim_start();
            has_content |=
                !(trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('%'));
        }
        offset += line.len();
    }
    if has_content {
        documents.push((start_line, &text[start..]));
    }
    documents
}

/// `skiff get -o yaml`: documents separated by `---` lines, readable by [`parse`].
pub fn to_yaml(values: &[Value]) -> String {
    values
        .iter()
        .map(|value| {
            // JSON is YAML too, should the YAML writer ever refuse a value.
            let mut text = serde_saphyr::to_string(value).unwrap_or_else(|_| value.to_string());
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_separator_lines() {
        let text = "# leading comment\n---\na: 1\n---\n\n--- # third\nb: 2\n---x: 1\n";
        assert_eq!(
            split_yaml(text),
            vec![
                (0, "# leading comment\n---\na: 1\n"),
                (3, "---\n\n"),
                (5, "--- # third\nb: 2\n---x: 1\n"),
            ]
        );
        assert_eq!(split_yaml("a: 1"), vec![(0, "a: 1")]);
        assert_eq!(split_yaml("# nothing\n\n"), vec![]);
        assert_eq!(split_yaml("a: 1\n---\n"), vec![(0, "a: 1\n"), (1, "---\n")]);
    }
}
