//! The `lifeboat` binary against Google Cloud Storage (fake-gcs-server on loopback): the second-provider
//! story of a backup to a local repository copied to GCS, restored from there, and checked.
//!
//! `.ci/run` starts fake-gcs-server and sets `LIFEBOAT_TEST_GCS_ENDPOINT`,
//! `LIFEBOAT_TEST_GCS_BUCKET` and `GOOGLE_OAUTH_ACCESS_TOKEN`; without them the test is skipped.

mod common;
use common::*;

#[test]
fn backup_copy_to_gcs_restore_and_check() {
    if let Some(url) = object_store_repository(
        "copy",
        "gs",
        "LIFEBOAT_TEST_GCS_ENDPOINT",
        "LIFEBOAT_TEST_GCS_BUCKET",
    ) {
        second_site_round_trip(&url);
    }
}
