//! The `lifeboat` binary against Azure Blob Storage (Azurite on loopback): the second-provider
//! story of a backup to a local repository copied to Azure, restored from there, and checked.
//!
//! `.ci/run` starts Azurite and sets `LIFEBOAT_TEST_AZURE_ENDPOINT`,
//! `LIFEBOAT_TEST_AZURE_CONTAINER` and `AZURE_STORAGE_KEY`; without them the test is skipped.

mod common;
use common::*;

#[test]
fn backup_copy_to_azure_restore_and_check() {
    if let Some(url) = object_store_repository(
        "copy",
        "azure",
        "LIFEBOAT_TEST_AZURE_ENDPOINT",
        "LIFEBOAT_TEST_AZURE_CONTAINER",
    ) {
        second_site_round_trip(&url);
    }
}
