//! Registration: the node in its farm, with its capacity kept up to date.

use super::*;

/// Registers this node in the configured farm unless the chain already knows it, and keeps
/// its capacity up to date.
pub(super) async fn register(
    chain: &Chain,
    identity: &NodeIdentity,
    config: &Config,
) -> Result<NodeId> {
    let account = identity.account_id();
    let capacity = offered_capacity(config)?;
    let mut warned = false;
    let mut unauthorized_warned = false;
    loop {
        if let Some(node) = chain.node_of(&account).await? {
            let record = crate::chain::node_record(chain, node).await?;
            let on_chain: zos_primitives::Resources = crate::chain::convert(&record.capacity)?;
            if on_chain != capacity
                || record.box_key != identity.box_public
                || record.executor_version.0 != config.reported_version.as_bytes()
            {
                let call = calls::update_capacity(
                    capacity,
                    identity.box_public,
                    &config.reported_version,
                    &record,
                )?;
                match retry("update_node", || {
                    chain.submit(&call, &identity.account, TX_TIMEOUT)
                })
                .await
                {
                    Ok(_) => info!(node, "node description updated"),
                    Err(e) => warn!(node, error = %e, "could not update the node's capacity"),
                }
            }
            return Ok(node);
        }
        let Some(farm) = config.farm_id else {
            bail!("account {account} is not a registered node and no farm id is configured (--farm-id)");
        };
        if chain.free_balance(&account).await? == 0 {
            if !warned {
                warn!(%account, "the node account has no funds to register: waiting for the farmer to fund it");
                warned = true;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            continue;
        }
        if !chain.node_authorized(farm, &account).await? {
            if !unauthorized_warned {
                warn!(%account, farm, "the farm owner has not authorized this node yet: waiting (zos farm authorize-node {farm} {account})");
                unauthorized_warned = true;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            continue;
        }
        let call = calls::register_node(
            farm,
            capacity,
            identity.box_public,
            &config.reported_version,
        )?;
        match retry("register_node", || {
            chain.submit(&call, &identity.account, TX_TIMEOUT)
        })
        .await
        {
            Ok(_) => {}
            Err(TxError::Dispatch(e)) if e.is("Grid", "AccountAlreadyHasNode") => {}
            // Revoked between the check and the registration: wait again.
            Err(TxError::Dispatch(e)) if e.is("Grid", "NodeNotAuthorized") => {}
            // Funds below the fee (not just zero): wait for the farmer, as above.
            Err(TxError::Dispatch(e)) if e.is("System", "Payment") => {
                if !warned {
                    warn!(%account, "the node account cannot pay the registration fee: waiting for the farmer to fund it");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Err(TxError::Dispatch(e)) => bail!("registering the node failed: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
}
