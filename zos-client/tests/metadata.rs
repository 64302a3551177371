//! The committed metadata the client's static code is generated from must match the runtime
//! built in this workspace. Refresh with `scripts/refresh-metadata.sh`.

use anyhow::{ensure, Result};
use node_harness::{client, ChainNode};

#[tokio::test(flavor = "multi_thread")]
async fn metadata_matches_runtime() -> Result<()> {
    let node = ChainNode::start_dev()?;
    let api = client::connect(&node.ws_url()).await?;
    let at = api.at_current_block().await?;
    ensure!(
        zos_client::chain::runtime::is_codegen_valid_for(at.metadata_ref()),
        "zos-client/metadata/zos-runtime.scale is stale: run scripts/refresh-metadata.sh"
    );
    Ok(())
}
