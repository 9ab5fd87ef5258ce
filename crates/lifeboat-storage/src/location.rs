//! Repository location strings: what the user types after `--repo`.
//!
//! | form | backend |
//! |---|---|
//! | `/srv/backup`, `relative/dir`, `local:/srv/backup` | local directory |
//! | `s3:https://host:port/bucket/prefix` | S3-compatible server, path-style addressing |
//! | `s3:http://127.0.0.1:9000/bucket` | the same without TLS (loopback, tests) |
//! | `s3:bucket/prefix` | AWS S3; region from `AWS_REGION`/`AWS_DEFAULT_REGION` (or an endpoint from `AWS_ENDPOINT_URL`) |
//! | `memory:` | in-process memory, for tests |
//!
//! `gs:` and `azure:` are reserved for Google Cloud Storage and Azure Blob and refused by this
//! build with a message saying so.

use crate::StorageError;

/// A parsed repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Local(String),
    /// An S3 bucket (AWS or S3-compatible).
    S3(S3Location),
    /// In-process memory (tests).
    Memory,
}

/// Where an S3 repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `scheme://host[:port]` of an S3-compatible server (path-style addressing), or `None` for
    /// AWS (endpoint from the region, or from `AWS_ENDPOINT_URL` if set).
    pub endpoint: Option<String>,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (empty: the bucket root).
    pub prefix: String,
}

impl S3Location {
    /// The root OpenDAL expects: `/prefix/` (or `/`).
    pub fn root(&self) -> String {
        if self.prefix.is_empty() {
            "/".to_string()
        } else {
            format!("/{}/", self.prefix)
        }
    }
}

fn config_error(location: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Config {
        location: location.to_string(),
        reason: reason.into(),
    }
}

/// Splits `bucket/some/prefix/` into bucket and normalised prefix.
fn bucket_and_prefix(location: &str, path: &str) -> Result<(String, String), StorageError> {
    let path = path.trim_matches('/');
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    if bucket.is_empty() {
        return Err(config_error(
            location,
            "no bucket given: use s3:https://host:port/bucket/prefix or s3:bucket/prefix",
        ));
    }
    let valid = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_');
    if !valid {
        return Err(config_error(
            location,
            format!("{bucket:?} is not a valid bucket name (lowercase letters, digits, '-', '.')"),
        ));
    }
    let prefix: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    if prefix.iter().any(|s| *s == "." || *s == "..") {
        return Err(config_error(
            location,
            "the prefix must not contain '.' or '..'",
        ));
    }
    Ok((bucket.to_string(), prefix.join("/")))
}

impl Location {
    /// Parses a location string.
    pub fn parse(location: &str) -> Result<Location, StorageError> {
        if location.starts_with("memory:") {
            return Ok(Location::Memory);
        }
        if let Some(rest) = location.strip_prefix("s3:") {
            let rest = rest.trim_start_matches("//");
            for scheme in ["https://", "http://"] {
                if let Some(after) = rest.strip_prefix(scheme) {
                    let (host, path) = after.split_once('/').unwrap_or((after, ""));
                    if host.is_empty() {
                        return Err(config_error(location, "no host in the endpoint URL"));
                    }
                    if host.contains(['?', '#', '@']) {
                        return Err(config_error(
                            location,
                            "the endpoint must be scheme://host[:port]; give credentials in \
                             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                        ));
                    }
                    let (bucket, prefix) = bucket_and_prefix(location, path)?;
                    return Ok(Location::S3(S3Location {
                        endpoint: Some(format!("{scheme}{host}")),
                        bucket,
                        prefix,
                    }));
                }
            }
            if rest.contains("://") {
                return Err(config_error(
                    location,
                    "only http:// and https:// endpoints are supported",
                ));
            }
            let (bucket, prefix) = bucket_and_prefix(location, rest)?;
            return Ok(Location::S3(S3Location {
                endpoint: None,
                bucket,
                prefix,
            }));
        }
        for (scheme, name) in [
            ("gs:", "Google Cloud Storage"),
            ("azure:", "Azure Blob Storage"),
        ] {
            if location.starts_with(scheme) {
                return Err(config_error(
                    location,
                    format!("{name} is not supported by this build yet; use s3: or a local path"),
                ));
            }
        }
        let path = location.strip_prefix("local:").unwrap_or(location);
        if path.contains("://") {
            return Err(config_error(
                location,
                "unknown URL scheme: use a local path, s3:https://host/bucket/prefix or s3:bucket/prefix",
            ));
        }
        if path.is_empty() {
            return Err(config_error(location, "empty path"));
        }
        Ok(Location::Local(path.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: Option<&str>, bucket: &str, prefix: &str) -> Location {
        Location::S3(S3Location {
            endpoint: endpoint.map(str::to_string),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(
            Location::parse("s3:https://minio.example:9000/backups/host1/").unwrap(),
            s3(Some("https://minio.example:9000"), "backups", "host1")
        );
        assert_eq!(
            Location::parse("s3:http://127.0.0.1:9000/b").unwrap(),
            s3(Some("http://127.0.0.1:9000"), "b", "")
        );
        assert_eq!(
            Location::parse("s3:my-bucket/a//b/").unwrap(),
            s3(None, "my-bucket", "a/b")
        );
        assert_eq!(
            Location::parse("s3://my-bucket").unwrap(),
            s3(None, "my-bucket", "")
        );
        assert_eq!(
            Location::parse("/srv/backup").unwrap(),
            Location::Local("/srv/backup".to_string())
        );
        assert_eq!(
            Location::parse("local:rel/dir").unwrap(),
            Location::Local("rel/dir".to_string())
        );
        assert_eq!(Location::parse("memory:").unwrap(), Location::Memory);
        let root = |l: Location| match l {
            Location::S3(s) => s.root(),
            _ => unreachable!(),
        };
        assert_eq!(root(Location::parse("s3:b").unwrap()), "/");
        assert_eq!(root(Location::parse("s3:b/x/y").unwrap()), "/x/y/");
    }

    #[test]
    fn refuses_what_it_cannot_serve_with_a_reason() {
        for bad in [
            "s3:",
            "s3:https://",
            "s3:https://host:9000/",
            "s3:https://user:pw@host/b",
            "s3:ftp://host/b",
            "s3:Upper/x",
            "s3:b/../x",
            "gs:bucket/x",
            "azure:container/x",
            "https://host/b",
            "",
        ] {
            let err = Location::parse(bad).unwrap_err();
            assert!(matches!(err, StorageError::Config { .. }), "{bad}: {err}");
        }
        let err = Location::parse("gs:b").unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
