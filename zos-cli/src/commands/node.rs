//! `zos node`: list and show nodes, declare a node's public configuration.

use super::*;

pub(super) async fn node_status(chain: &Chain, node: u32) -> Result<&'static str> {
    let status: Option<NodeStatus> = chain
        .runtime_api(runtime::runtime_apis().grid_api().node_status(node))
        .await?;
    Ok(match status {
        Some(NodeStatus::Online) => "online",
        Some(NodeStatus::Offline) => "offline",
        None => "unknown",
    })
}

pub(super) async fn node_list(ctx: &Ctx, farm: Option<u32>) -> Result<Out> {
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let mut entries = at
        .storage()
        .iter(runtime::storage().grid().nodes(), ())
        .await?;
    let mut nodes = Vec::new();
    while let Some(kv) = entries.next().await {
        let node = kv?.value().decode()?;
        if farm.is_none_or(|f| f == node.farm_id) {
            nodes.push(node);
        }
    }
    nodes.sort_by_key(|n| n.id);
    let mut rows = Vec::new();
    let mut human = vec![format!(
        "{:>5} {:>5}  {:<8} {:>9}  {:<50} CAPACITY",
        "NODE", "FARM", "STATUS", "CONTRACTS", "ACCOUNT"
    )];
    for n in &nodes {
        let status = node_status(&chain, n.id).await?;
        let capacity: Resources = convert(&n.capacity)?;
        human.push(format!(
            "{:>5} {:>5}  {:<8} {:>9}  {:<50} {}",
            n.id,
            n.farm_id,
            status,
            n.active_contracts,
            n.account.to_string(),
            format::resources(&capacity)
        ));
        rows.push(json!({
            "node": n.id, "farm": n.farm_id, "status": status, "account": n.account.to_string(),
            "active_contracts": n.active_contracts, "capacity": capacity,
        }));
    }
    if nodes.is_empty() {
        human = vec!["no nodes".into()];
    }
    Ok(Out::new(Json::Array(rows), human.join("\n")))
}

pub(super) async fn node_show(ctx: &Ctx, id: u32) -> Result<Out> {
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let Some(n) = at
        .storage()
        .try_fetch(runtime::storage().grid().nodes(), (id,))
        .await?
    else {
        bail!("node {id} not found");
    };
    let n = n.decode()?;
    let status = node_status(&chain, id).await?;
    let capacity: Resources = convert(&n.capacity)?;
    let reserved: Resources = convert(&n.reserved)?;
    let free: Option<Resources> = chain
        .runtime_api(runtime::runtime_apis().grid_api().free_capacity(id))
        .await?;
    let version = format::text(&n.executor_version.0);
    let heartbeat = n.last_heartbeat.as_ref().map(|h| h.block);
    let public = n
        .public_config
        .as_ref()
        .map(NodePublic::from_chain)
        .transpose()?;
    let mut human = format!(
        "node {id} (farm {})\n  account    {}\n  status     {status}{}\n  executor   {version}\n  box key    {}\n  capacity   {}\n  reserved   {}\n  free       {}\n  contracts  {} (public IPs {})",
        n.farm_id,
        n.account,
        heartbeat.map(|b| format!(", last heartbeat at block {b}")).unwrap_or_default(),
        hex::encode(n.box_key),
        format::resources(&capacity),
        format::resources(&reserved),
        free.as_ref().map(format::resources).unwrap_or_else(|| "-".into()),
        n.active_contracts,
        n.assigned_ips,
    );
    match &public {
        Some(p) => {
            for line in p.lines() {
                human.push_str(&format!("\n  {line}"));
            }
        }
        None => human.push_str("\n  public     none declared (zos node public-config)"),
    }
    Ok(Out::new(
        json!({
            "node": id, "farm": n.farm_id, "account": n.account.to_string(), "status": status,
            "executor_version": version, "box_key": hex::encode(n.box_key), "capacity": capacity,
            "reserved": reserved, "free": free, "active_contracts": n.active_contracts,
            "assigned_ips": n.assigned_ips, "last_heartbeat_block": heartbeat,
            "public_config": public.as_ref().map(NodePublic::json),
        }),
        human,
    ))
}

/// The DNS limit on a name's length, which is also the chain's bound on a node's domain.
pub(super) const MAX_DOMAIN_LEN: usize = 253;

/// A node's public config (pallet-grid's `PublicConfig`) in primitives types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NodePublic {
    ipv4: Option<PublicIpv4Config>,
    ipv6: Option<PublicIpv6Config>,
    domain: Option<String>,
}

impl NodePublic {
    /// What `zos node public-config` declares; `None` with `--clear`. The addresses are only
    /// parsed here: the chain checks them (test networks accept documentation ranges) and its
    /// error names say what is wrong.
    pub(super) fn from_args(
        ipv4: Option<&str>,
        gw4: Option<&str>,
        ipv6: Option<&str>,
        gw6: Option<&str>,
        domain: Option<&str>,
        clear: bool,
    ) -> Result<Option<Self>> {
        let given = [ipv4, gw4, ipv6, gw6, domain];
        if clear {
            if given.iter().any(Option::is_some) {
                bail!(
                    "--clear removes the node's whole public config: give it without --ipv4, \
                     --gw4, --ipv6, --gw6 and --domain"
                );
            }
            return Ok(None);
        }
        if given.iter().all(Option::is_none) {
            bail!(
                "nothing to declare: give --ipv4 with --gw4, --ipv6 with --gw6, --domain, or \
                 --clear"
            );
        }
        let ipv4 = match (ipv4, gw4) {
            (Some(ip), Some(gw)) => Some(PublicIpv4Config {
                ip: parse_cidr(ip).context("--ipv4")?,
                gateway: parse_ipv4(gw).context("--gw4")?,
            }),
            (None, None) => None,
            (Some(_), None) => bail!("--ipv4 needs its gateway: add --gw4"),
            (None, Some(_)) => bail!("--gw4 is the gateway of --ipv4: add --ipv4"),
        };
        let ipv6 = match (ipv6, gw6) {
            (Some(ip), Some(gw)) => Some(PublicIpv6Config {
                ip: parse_cidr6(ip).context("--ipv6")?,
                gateway: parse_ipv6(gw).context("--gw6")?,
            }),
            (None, None) => None,
            (Some(_), None) => bail!("--ipv6 needs its gateway: add --gw6 (e.g. fe80::1)"),
            (None, Some(_)) => bail!("--gw6 is the gateway of --ipv6: add --ipv6"),
        };
        if let Some(d) = domain {
            if d.len() > MAX_DOMAIN_LEN {
                bail!(
                    "--domain: a DNS name has at most {MAX_DOMAIN_LEN} bytes, {d:?} has {}",
                    d.len()
                );
            }
        }
        Ok(Some(Self {
            ipv4,
            ipv6,
            domain: domain.map(str::to_owned),
        }))
    }

    fn from_chain(
        config: &runtime::runtime_types::pallet_grid::types::PublicConfig,
    ) -> Result<Self> {
        Ok(Self {
            ipv4: config.ipv4.as_ref().map(convert).transpose()?,
            ipv6: config.ipv6.as_ref().map(convert).transpose()?,
            domain: config.domain.as_ref().map(|d| format::text(&d.0)),
        })
    }

    fn to_chain(&self) -> Result<runtime::runtime_types::pallet_grid::types::PublicConfig> {
        Ok(runtime::runtime_types::pallet_grid::types::PublicConfig {
            ipv4: self.ipv4.as_ref().map(convert).transpose()?,
            ipv6: self.ipv6.as_ref().map(convert).transpose()?,
            domain: self
                .domain
                .as_ref()
                .map(|d| BoundedVec(d.as_bytes().to_vec())),
        })
    }

    fn json(&self) -> Json {
        json!({
            "ipv4": self.ipv4.map(|c| json!({ "ip": format::cidr(&c.ip), "gateway": format::ip(c.gateway) })),
            "ipv6": self.ipv6.map(|c| json!({ "ip": format::cidr6(&c.ip), "gateway": format::ipv6(c.gateway) })),
            "domain": self.domain,
        })
    }

    /// One line each for IPv4, IPv6 and domain, "-" when not declared.
    fn lines(&self) -> Vec<String> {
        let ipv4 = self
            .ipv4
            .map(|c| format!("{}, gateway {}", format::cidr(&c.ip), format::ip(c.gateway)));
        let ipv6 = self.ipv6.map(|c| {
            format!(
                "{}, gateway {}{}",
                format::cidr6(&c.ip),
                format::ipv6(c.gateway),
                if c.ip.prefix_len > MAX_IPV6_PREFIX_FOR_VMS {
                    " (narrower than a /64: no addresses for VMs)"
                } else {
                    ""
                }
            )
        });
        [
            ("ipv4", ipv4),
            ("ipv6", ipv6),
            ("domain", self.domain.clone()),
        ]
        .into_iter()
        .map(|(label, value)| format!("{label:<11}{}", value.unwrap_or_else(|| "-".into())))
        .collect()
    }
}

pub(super) async fn node_public_config(
    ctx: &Ctx,
    id: u32,
    config: Option<NodePublic>,
) -> Result<Out> {
    let signer = ctx.signer()?;
    let value = config.as_ref().map(NodePublic::to_chain).transpose()?;
    let chain = ctx.chain().await?;
    let call = runtime::tx().grid().set_node_public_config(id, value);
    chain.submit(&call, &signer, ctx.timeout).await?;
    let human = match &config {
        Some(c) => {
            let mut h = vec![format!("node {id}: public config set")];
            h.extend(c.lines().into_iter().map(|l| format!("  {l}")));
            h.join("\n")
        }
        None => format!("node {id}: public config cleared"),
    };
    Ok(Out::new(
        json!({ "node": id, "public_config": config.as_ref().map(NodePublic::json) }),
        human,
    ))
}

pub(super) async fn node_remove(ctx: &Ctx, id: u32) -> Result<Out> {
    let signer = ctx.signer()?;
    let chain = ctx.chain().await?;
    let call = runtime::tx().grid().remove_node(id);
    let events = chain.submit(&call, &signer, ctx.timeout).await?;
    if let Some(scheduled) = events
        .find_first::<runtime::grid::events::NodeRemovalScheduled>()
        .transpose()?
    {
        return Ok(Out::new(
            json!({ "node": id, "removed": false, "due_block": scheduled.due }),
            format!(
                "node {id}: leaving; takes no new contracts, and its contracts end at block {}",
                scheduled.due
            ),
        ));
    }
    Ok(Out::new(
        json!({ "node": id, "removed": true }),
        format!("node {id}: removed"),
    ))
}

pub(super) async fn node_keep(ctx: &Ctx, id: u32) -> Result<Out> {
    let signer = ctx.signer()?;
    let chain = ctx.chain().await?;
    let call = runtime::tx().grid().cancel_node_removal(id);
    chain.submit(&call, &signer, ctx.timeout).await?;
    Ok(Out::new(
        json!({ "node": id, "leaving": false }),
        format!("node {id}: removal withdrawn; it takes new contracts again"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(
        ipv4: Option<&str>,
        gw4: Option<&str>,
        ipv6: Option<&str>,
        gw6: Option<&str>,
        domain: Option<&str>,
        clear: bool,
    ) -> Result<Option<NodePublic>> {
        NodePublic::from_args(ipv4, gw4, ipv6, gw6, domain, clear)
    }

    fn error(result: Result<Option<NodePublic>>) -> String {
        format!("{:#}", result.expect_err("should be refused"))
    }

    #[test]
    fn public_config_options_are_checked_before_anything_is_sent() {
        let full = args(
            Some("198.51.100.20/24"),
            Some("198.51.100.1"),
            Some("2001:db8:1::2/64"),
            Some("fe80::1"),
            Some("gw.example.com"),
            false,
        )
        .unwrap()
        .expect("a config");
        assert_eq!(format::cidr(&full.ipv4.unwrap().ip), "198.51.100.20/24");
        assert_eq!(format::ip(full.ipv4.unwrap().gateway), "198.51.100.1");
        assert_eq!(format::cidr6(&full.ipv6.unwrap().ip), "2001:db8:1::2/64");
        assert_eq!(format::ipv6(full.ipv6.unwrap().gateway), "fe80::1");
        assert_eq!(full.domain.as_deref(), Some("gw.example.com"));

        let v6_only = args(
            None,
            None,
            Some("2001:db8:1::2/64"),
            Some("fe80::1"),
            None,
            false,
        )
        .unwrap()
        .expect("a config");
        assert!(v6_only.ipv4.is_none() && v6_only.domain.is_none());

        assert_eq!(args(None, None, None, None, None, true).unwrap(), None);

        assert!(error(args(None, None, None, None, None, false)).contains("nothing to declare"));
        assert!(error(args(
            Some("198.51.100.20/24"),
            None,
            None,
            None,
            None,
            false
        ))
        .contains("--gw4"));
        assert!(
            error(args(None, Some("198.51.100.1"), None, None, None, false)).contains("add --ipv4")
        );
        assert!(error(args(
            None,
            None,
            Some("2001:db8:1::2/64"),
            None,
            None,
            false
        ))
        .contains("--gw6"));
        assert!(error(args(None, None, None, Some("fe80::1"), None, false)).contains("add --ipv6"));
        assert!(error(args(None, None, None, None, Some("a.example"), true)).contains("--clear"));
        assert!(error(args(
            Some("198.51.100.20"),
            Some("198.51.100.1"),
            None,
            None,
            None,
            false
        ))
        .contains("--ipv4"));
        assert!(error(args(
            None,
            None,
            Some("2001:db8:1::2/64"),
            Some("198.51.100.1"),
            None,
            false
        ))
        .contains("--gw6"));
        let long = "a".repeat(MAX_DOMAIN_LEN + 1);
        assert!(error(args(None, None, None, None, Some(&long), false)).contains("--domain"));
    }

    #[test]
    fn public_config_renders_what_is_declared() {
        let config = args(
            None,
            None,
            Some("2001:db8:1::2/64"),
            Some("fe80::1"),
            None,
            false,
        )
        .unwrap()
        .expect("a config");
        assert_eq!(
            config.lines(),
            vec![
                "ipv4       -".to_string(),
                "ipv6       2001:db8:1::2/64, gateway fe80::1".to_string(),
                "domain     -".to_string(),
            ]
        );
        assert_eq!(
            config.json(),
            json!({
                "ipv4": null,
                "ipv6": { "ip": "2001:db8:1::2/64", "gateway": "fe80::1" },
                "domain": null
            })
        );
    }
}
