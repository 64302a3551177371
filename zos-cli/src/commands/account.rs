//! `zos transfer`, `zos seal-key` and `zos seal-env`.

use super::*;

pub(super) async fn transfer(ctx: &Ctx, to: &str, amount: &str) -> Result<Out> {
    let key = ctx.signer()?;
    let to = parse_account(to)?;
    let value = parse_amount(amount)?;
    let chain = ctx.chain().await?;
    let call = runtime::tx()
        .balances()
        .transfer_keep_alive(subxt::utils::MultiAddress::Id(to.clone()), value);
    chain.submit(&call, &key, ctx.timeout).await?;
    let balance = chain.free_balance(&to).await?;
    Ok(Out::new(
        json!({ "to": to.to_string(), "amount": value.to_string(), "balance": balance.to_string() }),
        format!(
            "sent {} to {to} (balance now {})",
            format::zgt(value),
            format::zgt(balance)
        ),
    ))
}

pub(super) async fn seal_key(ctx: &Ctx, node: u32, wg_key: Option<&str>) -> Result<Out> {
    let (secret, generated) = match wg_key {
        Some(k) => (
            zeroize::Zeroizing::new(parse_hash(k).context("--wg-key")?),
            false,
        ),
        None => (crate::network_plan::random_key()?, true),
    };
    let chain = ctx.chain().await?;
    let box_key = crate::network_cmd::node_box_key(&chain, node).await?;
    let sealed = zos_primitives::sealing::seal_wireguard_key(&box_key, &secret)
        .map_err(|e| anyhow!("sealing failed: {e:?}"))?;
    let public = zos_primitives::sealing::box_public_key(&secret);
    let mut human = format!(
        "private_key = \"{}\"   # sealed to node {node}\npublic key  {}",
        hex::encode(&sealed.0),
        hex::encode(public)
    );
    if generated {
        human.push_str(&format!(
            "\nnew WireGuard private key (keep it secret) {}",
            hex::encode(*secret)
        ));
    }
    Ok(Out::new(
        json!({
            "node": node, "sealed": hex::encode(&sealed.0), "public_key": hex::encode(public),
            "private_key": generated.then(|| hex::encode(*secret)),
        }),
        human,
    ))
}

pub(super) async fn seal_env(
    ctx: &Ctx,
    node: u32,
    owner: Option<&str>,
    name: &str,
    secret: &[u8],
) -> Result<Out> {
    let key = zos_primitives::spec::EnvKey::try_from(name).map_err(|_| {
        anyhow!(
            "the variable name is longer than {} bytes",
            zos_primitives::spec::MAX_ENV_KEY_LEN
        )
    })?;
    if secret.is_empty() {
        bail!("no secret on standard input (e.g. `printf %s \"$TOKEN\" | zos seal-env ...`)");
    }
    std::str::from_utf8(secret)
        .context("the secret must be UTF-8 (environment values are text)")?;
    let owner = match owner {
        Some(o) => parse_account(o)?,
        None => ctx
            .signer()
            .context("give --owner, or --key for the owner's account")?
            .public_key()
            .to_account_id(),
    };
    let chain = ctx.chain().await?;
    let box_key = crate::network_cmd::node_box_key(&chain, node).await?;
    let value = zos_primitives::sealing::seal_env_value(&box_key, &owner.0, key.as_bytes(), secret)
        .map_err(|e| match e {
            zos_primitives::sealing::SealError::SecretTooLong => anyhow!(
                "the secret is {} bytes; a sealed value holds at most {}",
                secret.len(),
                zos_primitives::spec::MAX_SEALED_ENV_SECRET_LEN
            ),
            e => anyhow!("sealing failed: {e}"),
        })?;
    Ok(Out::new(
        json!({ "node": node, "owner": owner.to_string(), "key": name, "value": value }),
        format!("{{ key = \"{name}\", value = \"{value}\" }}   # sealed to node {node} for contracts of {owner}"),
    ))
}

// ---- events
