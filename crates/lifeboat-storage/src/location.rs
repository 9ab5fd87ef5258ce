//! Repository location strings: what the user types after `--repo`.
//!
//! | form | backend |
//! |---|---|
//! | `/srv/backup`, `relative/dir`, `local:/srv/backup` | local directory |
//! | `s3:https://host:port/bucket/prefix` | S3-compatible server, path-style addressing |
//! | `s3:http://127.0.0.1:9000/bucket` | the same without TLS (loopback, tests) |
//! | `s3:bucket/prefix` | AWS S3; region from `AWS_REGION`/`AWS_DEFAULT_REGION` (or an endpoint from `AWS_ENDPOINT_URL`) |
//! | `azure:container/prefix` | Azure Blob Storage; account from `AZURE_STORAGE_ACCOUNT` (endpoint `https://ACCOUNT.blob.core.windows.net`) |
//! | `azure:https://host:port/account/container/prefix` | an Azure-compatible endpoint (Azurite, sovereign clouds) |
//! | `gs:bucket/prefix` | Google Cloud Storage (JSON API at `https://storage.googleapis.com`) |
//! | `gs:https://host:port/bucket/prefix` | a GCS-compatible endpoint (emulators, Private Service Connect) |
//! | `memory:` | in-process memory, for tests |

use crate::StorageError;

/// A parsed repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Local(String),
    /// An S3 bucket (AWS or S3-compatible).
    S3(S3Location),
    /// An Azure Blob Storage container.
    Azure(AzureLocation),
    /// A Google Cloud Storage bucket.
    Gcs(GcsLocation),
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

/// Where an Azure Blob repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureLocation {
    /// `scheme://host[:port]/account` for a non-default endpoint, or `None` for
    /// `https://ACCOUNT.blob.core.windows.net` with the account from the environment.
    pub endpoint: Option<String>,
    /// Storage account named in the URL (with an endpoint), else from `AZURE_STORAGE_ACCOUNT`.
    pub account: Option<String>,
    /// Container name.
    pub container: String,
    /// Blob name prefix, without leading or trailing `/`.
    pub prefix: String,
}

/// Where a Google Cloud Storage repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsLocation {
    /// `scheme://host[:port]` of a GCS-compatible JSON API (an emulator, a Private Service
    /// Connect endpoint), or `None` for `https://storage.googleapis.com`.
    pub endpoint: Option<String>,
    /// Bucket name.
    pub bucket: String,
    /// Object name prefix, without leading or trailing `/`.
    pub prefix: String,
}

/// The root OpenDAL expects for a key prefix: `/prefix/` (or `/`).
fn root_of(prefix: &str) -> String {
    if prefix.is_empty() {
        "/".to_string()
    } else {
        format!("/{prefix}/")
    }
}

impl AzureLocation {
    /// The root OpenDAL expects: `/prefix/` (or `/`).
    pub fn root(&self) -> String {
        root_of(&self.prefix)
    }
}

impl S3Location {
    /// The root OpenDAL expects: `/prefix/` (or `/`).
    pub fn root(&self) -> String {
        root_of(&self.prefix)
    }
}

impl GcsLocation {
    /// The root OpenDAL expects: `/prefix/` (or `/`).
    pub fn root(&self) -> String {
        root_of(&self.prefix)
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
        if let Some(rest) = location.strip_prefix("azure:") {
            return parse_azure(location, rest.trim_start_matches("//"));
        }
        if let Some(rest) = location.strip_prefix("gs:") {
            return parse_gcs(location, rest.trim_start_matches("//"));
        }
        let path = location.strip_prefix("local:").unwrap_or(location);
        if path.contains("://") {
            return Err(config_error(
                location,
                "unknown URL scheme: use a local path, s3:bucket/prefix, s3:https://host/bucket/prefix, \
                 azure:container/prefix or gs:bucket/prefix",
            ));
        }
        if path.is_empty() {
            return Err(config_error(location, "empty path"));
        }
        Ok(Location::Local(path.to_string()))
    }
}

fn parse_azure(location: &str, rest: &str) -> Result<Location, StorageError> {
    let mut endpoint = None;
    let mut account = None;
    let mut path = rest;
    for scheme in ["https://", "http://"] {
        if let Some(after) = rest.strip_prefix(scheme) {
            let (host, after_host) = after.split_once('/').unwrap_or((after, ""));
            let (name, after_account) = after_host.split_once('/').unwrap_or((after_host, ""));
            if host.is_empty() || name.is_empty() || host.contains(['?', '#', '@']) {
                return Err(config_error(
                    location,
                    "use azure:https://host:port/account/container/prefix; give the key in \
                     AZURE_STORAGE_KEY",
                ));
            }
            endpoint = Some(format!("{scheme}{host}/{name}"));
            account = Some(name.to_string());
            path = after_account;
        }
    }
    if endpoint.is_none() && rest.contains("://") {
        return Err(config_error(
            location,
            "only http:// and https:// endpoints are supported",
        ));
    }
    let (container, prefix) = bucket_and_prefix(location, path).map_err(|_| {
        config_error(
            location,
            "give a container: azure:container/prefix (lowercase letters, digits, '-')",
        )
    })?;
    Ok(Location::Azure(AzureLocation {
        endpoint,
        account,
        container,
        prefix,
    }))
}

/// `gs:bucket/prefix` or `gs:https://host:port/bucket/prefix`.
fn parse_gcs(location: &str, rest: &str) -> Result<Location, StorageError> {
    let mut endpoint = None;
    let mut path = rest;
    for scheme in ["https://", "http://"] {
        if let Some(after) = rest.strip_prefix(scheme) {
            let (host, after_host) = after.split_once('/').unwrap_or((after, ""));
            if host.is_empty() || host.contains(['?', '#', '@']) {
                return Err(config_error(
                    location,
                    "use gs:https://host:port/bucket/prefix; give credentials in \
                     GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_OAUTH_ACCESS_TOKEN",
                ));
            }
            endpoint = Some(format!("{scheme}{host}"));
            path = after_host;
        }
    }
    if endpoint.is_none() && rest.contains("://") {
        return Err(config_error(
            location,
            "only http:// and https:// endpoints are supported",
        ));
    }
    let (bucket, prefix) = bucket_and_prefix(location, path).map_err(|e| match e {
        StorageError::Config { reason, .. } if reason.starts_with("no bucket") => config_error(
            location,
            "no bucket given: use gs:bucket/prefix or gs:https://host:port/bucket/prefix",
        ),
        other => other,
    })?;
    Ok(Location::Gcs(GcsLocation {
        endpoint,
        bucket,
        prefix,
    }))
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
        assert_eq!(
            Location::parse("azure:backups/host1/").unwrap(),
            Location::Azure(AzureLocation {
                endpoint: None,
                account: None,
                container: "backups".into(),
                prefix: "host1".into(),
            })
        );
        assert_eq!(
            Location::parse("azure:http://127.0.0.1:10000/devstoreaccount1/c/x/y").unwrap(),
            Location::Azure(AzureLocation {
                endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
                account: Some("devstoreaccount1".into()),
                container: "c".into(),
                prefix: "x/y".into(),
            })
        );
        let gcs = |endpoint: Option<&str>, bucket: &str, prefix: &str| {
            Location::Gcs(GcsLocation {
                endpoint: endpoint.map(str::to_string),
                bucket: bucket.into(),
                prefix: prefix.into(),
            })
        };
        assert_eq!(
            Location::parse("gs:backups/host1/").unwrap(),
            gcs(None, "backups", "host1")
        );
        assert_eq!(
            Location::parse("gs://my_bucket.example").unwrap(),
            gcs(None, "my_bucket.example", "")
        );
        assert_eq!(
            Location::parse("gs:http://127.0.0.1:4443/b/x//y").unwrap(),
            gcs(Some("http://127.0.0.1:4443"), "b", "x/y")
        );
        match Location::parse("gs:b/x/y").unwrap() {
            Location::Gcs(g) => assert_eq!(g.root(), "/x/y/"),
            other => panic!("{other:?}"),
        }
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
            "gs:",
            "gs:https://",
            "gs:https://host:4443/",
            "gs:https://user@host/b",
            "gs:ftp://host/b",
            "gs:Upper/x",
            "gs:b/../x",
            "azure:",
            "azure:https://host:10000/",
            "azure:https://host/account",
            "azure:ftp://host/a/c",
            "azure:Upper/x",
            "https://host/b",
            "",
        ] {
            let err = Location::parse(bad).unwrap_err();
            assert!(matches!(err, StorageError::Config { .. }), "{bad}: {err}");
        }
        let err = Location::parse("gs:").unwrap_err().to_string();
        assert!(err.contains("gs:bucket/prefix"), "{err}");
    }
}
