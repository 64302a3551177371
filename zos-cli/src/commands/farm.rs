//! `zos farm`: create a farm, add public IPs to it, authorize nodes to join it, list farms.

use super::*;

pub(super) async fn farm_create(ctx: &Ctx, name: &str) -> Result<Out> {
    let signer = ctx.signer()?;
    let chain = ctx.chain().await?;
    let call = runtime::tx()
        .grid()
        .create_farm(bounded_bytes(name.as_bytes())?);
    let events = chain.submit(&call, &signer, ctx.timeout).await?;
    let created = events
        .find_first::<runtime::grid::events::FarmCreated>()
        .ok_or_else(|| anyhow!("no FarmCreated event"))??;
    Ok(Out::new(
        json!({ "farm": created.farm_id, "name": name, "owner": created.owner.to_string() }),
        format!("farm {} created: {name}", created.farm_id),
    ))
}

pub(super) async fn farm_ip_add(ctx: &Ctx, farm: u32, cidr: &str, gateway: &str) -> Result<Out> {
    let signer = ctx.signer()?;
    let config = PublicIpv4Config {
        ip: parse_cidr(cidr)?,
        gateway: parse_ipv4(gateway)?,
    };
    let chain = ctx.chain().await?;
    let call = runtime::tx().grid().add_farm_ip(farm, convert(&config)?);
    chain.submit(&call, &signer, ctx.timeout).await?;
    Ok(Out::new(
        json!({ "farm": farm, "ip": format::cidr(&config.ip), "gateway": format::ip(config.gateway) }),
        format!(
            "farm {farm}: added {} (gateway {})",
            format::cidr(&config.ip),
            format::ip(config.gateway)
        ),
    ))
}

/// Authorizes (`grant`) or revokes a node account's registration into `farm`.
pub(super) async fn farm_authorize_node(
    ctx: &Ctx,
    farm: u32,
    account: &str,
    grant: bool,
) -> Result<Out> {
    let signer = ctx.signer()?;
    let node_account = crate::keys::parse_account(account)?;
    let chain = ctx.chain().await?;
    if grant {
        let call = runtime::tx()
            .grid()
            .authorize_node(farm, node_account.clone());
        chain.submit(&call, &signer, ctx.timeout).await?;
    } else {
        let call = runtime::tx()
            .grid()
            .revoke_node_authorization(farm, node_account.clone());
        chain.submit(&call, &signer, ctx.timeout).await?;
    }
    let verb = if grant {
        "authorized"
    } else {
        "no longer authorized"
    };
    Ok(Out::new(
        json!({ "farm": farm, "account": node_account.to_string(), "authorized": grant }),
        format!("farm {farm}: node account {node_account} {verb} to register"),
    ))
}

pub(super) async fn farm_list(ctx: &Ctx) -> Result<Out> {
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let mut entries = at
        .storage()
        .iter(runtime::storage().grid().farms(), ())
        .await?;
    let mut farms = Vec::new();
    while let Some(kv) = entries.next().await {
        farms.push(kv?.value().decode()?);
    }
    farms.sort_by_key(|f| f.id);
    let mut rows = Vec::new();
    let mut human = vec![format!(
        "{:>5}  {:<24} {:<50} {:>4} {:>4}",
        "FARM", "NAME", "OWNER", "IPS", "FREE"
    )];
    for f in &farms {
        let name = format::text(&f.name.0);
        let free = f
            .public_ips
            .0
            .iter()
            .filter(|e| e.assigned.is_none())
            .count();
        let ips: Vec<Json> = f
            .public_ips
            .0
            .iter()
            .map(|e| {
                let c: PublicIpv4Config = convert(&e.config).unwrap_or(PublicIpv4Config {
                    ip: zos_primitives::Ipv4Cidr { ip: [0; 4], prefix_len: 0 },
                    gateway: [0; 4],
                });
                json!({ "ip": format::cidr(&c.ip), "gateway": format::ip(c.gateway), "assigned": e.assigned.is_some() })
            })
            .collect();
        human.push(format!(
            "{:>5}  {:<24} {:<50} {:>4} {:>4}",
            f.id,
            name,
            f.owner.to_string(),
            ips.len(),
            free
        ));
        rows.push(
            json!({ "farm": f.id, "name": name, "owner": f.owner.to_string(), "public_ips": ips }),
        );
    }
    if farms.is_empty() {
        human = vec!["no farms".into()];
    }
    Ok(Out::new(Json::Array(rows), human.join("\n")))
}
