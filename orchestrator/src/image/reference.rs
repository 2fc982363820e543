//! Image references, normalised the way Docker and containerd spell them in full:
//! `busybox` is `docker.io/library/busybox:latest`, `busybox:1.36` is
//! `docker.io/library/busybox:1.36`, `ghcr.io/org/app` is `ghcr.io/org/app:latest`.
//! The store keeps only the full form, so every spelling of a name finds the same
//! image.

use std::fmt;

use super::ImageError;
use super::digest::Digest;

const DEFAULT_DOMAIN: &str = "docker.io";
const OFFICIAL_NAMESPACE: &str = "library";
const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised reference: `<domain>/<path>[:<tag>][@<digest>]`, with the
/// tag defaulting to `latest` when neither tag nor digest is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Domain and path: `docker.io/library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, ImageError> {
        let invalid = |reason: &'static str| ImageError::InvalidReference {
            reference: text.to_owned(),
            reason,
        };
        let (name_and_tag, digest) = match text.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(
                    Digest::parse(digest)
                        .ok_or(invalid("the digest is not sha256:<64 hex digits>"))?,
                ),
            ),
            None => (text, None),
        };
        // A colon after the last slash starts the tag; one before it is a registry port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_and_tag[..last_slash + i],
                Some(&name_and_tag[last_slash + i + 1..]),
            ),
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag
            && !is_tag(tag)
        {
            return Err(invalid(
                "the tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first, rest.to_owned())
            }
            _ => (DEFAULT_DOMAIN, name.to_owned()),
        };
        let domain = if domain == "index.docker.io" {
            DEFAULT_DOMAIN
        } else {
            domain
        };
        if !is_domain(domain) {
            return Err(invalid(
                "the registry must be a host name with an optional :port",
            ));
        }
        if path.is_empty() || !path.split('/').all(is_path_component) {
            return Err(invalid(
                "the repository must be lowercase [a-z0-9] words joined by / . _ or -",
            ));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path
        };
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag.map(str::to_owned),
        };
        Ok(Reference {
            repository: format!("{domain}/{path}"),
            tag,
            digest,
        })
    }
}

impl Reference {
    /// The registry: `docker.io`, `127.0.0.1:5000`.
    pub fn domain(&self) -> &str {
        self.repository
            .split_once('/')
            .map_or("", |(domain, _)| domain)
    }

    /// The repository within its registry: `library/busybox`.
    pub fn path(&self) -> &str {
        self.repository.split_once('/').map_or("", |(_, path)| path)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The full form of `text`: `busybox` becomes `docker.io/library/busybox:latest`.
pub fn normalize(text: &str) -> Result<String, ImageError> {
    Reference::parse(text).map(|reference| reference.to_string())
}

/// Whether `text` is only a tag (`latest`, `1.36`), as OCI layouts often write
/// in `org.opencontainers.image.ref.name`, rather than a name with a repository.
pub fn is_bare_tag(text: &str) -> bool {
    !text.contains(['/', ':', '@']) && is_tag(text)
}

fn is_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    first_ok
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

/// `[a-z0-9]+` words joined by single separators (`.`, `_`, `__`, or runs of `-`).
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    alnum(first)
        && alnum(last)
        && bytes
            .iter()
            .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        && !component.contains("..")
        && !component.contains("___")
        && !component.contains("._")
        && !component.contains("_.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox:1.36", "docker.io/library/busybox:1.36"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
            ),
            ("someone/app:v2", "docker.io/someone/app:v2"),
            ("ghcr.io/org/app", "ghcr.io/org/app:latest"),
            ("localhost:5000/app:dev", "localhost:5000/app:dev"),
            ("localhost/app", "localhost/app:latest"),
            (
                "registry.example:443/a/b/c:1.0-rc_1",
                "registry.example:443/a/b/c:1.0-rc_1",
            ),
        ];
        for (short, full) in cases {
            let parsed = Reference::parse(short).unwrap();
            assert_eq!(
                format!("{}/{}", parsed.domain(), parsed.path()),
                parsed.repository
            );
            assert_eq!(normalize(short).unwrap(), full, "{short}");
            assert_eq!(normalize(full).unwrap(), full, "{full} is a fixed point");
        }
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            normalize(&format!("busybox@{digest}")).unwrap(),
            format!("docker.io/library/busybox@{digest}")
        );
        assert_eq!(
            normalize(&format!("busybox:1.36@{digest}")).unwrap(),
            format!("docker.io/library/busybox:1.36@{digest}")
        );
    }

    #[test]
    fn refuses_malformed_references_saying_why() {
        let cases = [
            ("", "the repository must be"),
            ("BusyBox", "the repository must be"),
            ("busybox:", "the tag must be"),
            ("busybox:-x", "the tag must be"),
            ("a//b", "the repository must be"),
            ("a/b..c", "the repository must be"),
            ("busybox@sha256:abc", "the digest is not"),
            ("bad_host.io:x/app", "the registry must be"),
        ];
        for (text, reason) in cases {
            let error = normalize(text).unwrap_err().to_string();
            assert!(
                error.contains(&format!("{text:?}")) && error.contains(reason),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn tells_bare_tags_from_names() {
        assert!(is_bare_tag("latest"));
        assert!(is_bare_tag("1.36"));
        assert!(!is_bare_tag("busybox:1.36"));
        assert!(!is_bare_tag("docker.io/library/busybox"));
    }
}
