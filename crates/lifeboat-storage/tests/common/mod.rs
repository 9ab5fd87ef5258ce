//! What the object-store tests share: fresh locations on the servers `.ci/run` starts.

/// A fresh, empty location (`scheme:endpoint/bucket/storage-…`) on the object store whose
/// endpoint and bucket (or container) are in the variables named; `None`, after a SKIPPED
/// line, when the endpoint variable is unset.
pub fn object_store_location(
    test: &str,
    scheme: &str,
    endpoint_var: &str,
    bucket_var: &str,
) -> Option<String> {
    let Ok(endpoint) = std::env::var(endpoint_var) else {
        println!("SKIPPED {test}: {endpoint_var} is not set (.ci/run sets it)");
        return None;
    };
    let bucket = std::env::var(bucket_var).unwrap_or_else(|_| "lifeboat-test".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Some(format!(
        "{scheme}:{endpoint}/{bucket}/storage-{test}-{}-{nanos}",
        std::process::id()
    ))
}
