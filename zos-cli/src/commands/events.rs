//! `zos events`: the deployer-facing chain events, followed live.

use super::*;

/// Pallets whose events concern deployers.
pub(super) const EVENT_PALLETS: [&str; 3] = ["Deployments", "Billing", "Grid"];

pub(super) async fn events(
    ctx: &Ctx,
    contract: Option<ContractId>,
    from: Option<u64>,
    follow: bool,
) -> Result<i32> {
    let chain = ctx.chain().await?;
    let head = chain.api.at_current_block().await?.block_number();
    let mut next = from.unwrap_or(head);
    let print_range = |chain: &Chain, start: u64, end: u64| {
        let api = chain.api.clone();
        async move {
            for n in start..=end {
                let at = api.at_block(n).await?;
                for ev in at.events().fetch().await?.iter() {
                    let ev = ev?;
                    if !EVENT_PALLETS.contains(&ev.pallet_name()) {
                        continue;
                    }
                    let fields = ev.decode_fields_unchecked_as::<Value>()?;
                    if let Some(c) = contract {
                        if field_u128(&fields, "contract") != Some(c as u128) {
                            continue;
                        }
                    }
                    print_event(ctx.json, n, ev.pallet_name(), ev.event_name(), &fields);
                }
            }
            anyhow::Ok(())
        }
    };
    if next <= head {
        print_range(&chain, next, head).await?;
        next = head + 1;
    }
    if !follow {
        return Ok(0);
    }
    let mut blocks = chain.api.stream_blocks().await?;
    while let Some(block) = blocks.next().await {
        let n = block?.number();
        if n >= next {
            print_range(&chain, next, n).await?;
            next = n + 1;
        }
    }
    bail!("the chain closed the finalized block stream")
}

pub(super) fn print_event(json: bool, block: u64, pallet: &str, name: &str, fields: &Value) {
    if json {
        println!(
            "{}",
            json!({ "block": block, "event": format!("{pallet}.{name}"), "fields": pretty_fields(fields) })
        );
        return;
    }
    let detail = match (pallet, name) {
        ("Billing", "ReportSettled") => format!(
            "contract {} window {}..{} charged {} collected {} debt {}",
            field_u128(fields, "contract").unwrap_or_default(),
            field_u128(fields, "window_start").unwrap_or_default(),
            field_u128(fields, "window_end").unwrap_or_default(),
            format::zgt(field_u128(fields, "charged").unwrap_or_default()),
            format::zgt(field_u128(fields, "collected").unwrap_or_default()),
            format::zgt(field_u128(fields, "debt").unwrap_or_default()),
        ),
        _ => pretty_fields(fields),
    };
    println!("#{block} {pallet}.{name} {detail}");
}

/// Field names that hold accounts (shown as SS58); other 32-byte values are hashes (hex).
pub(super) const ACCOUNT_FIELDS: [&str; 6] = [
    "owner",
    "signer",
    "proposer",
    "who",
    "account",
    "farm_owner",
];

/// `{ a: 1, owner: 5Grw…, hash: 0x12… }`: top-level fields, byte arrays made readable.
pub(super) fn pretty_fields(fields: &Value) -> String {
    use subxt::ext::scale_value::{Composite, ValueDef};
    let ValueDef::Composite(Composite::Named(named)) = &fields.value else {
        return fields.to_string();
    };
    let parts: Vec<String> = named
        .iter()
        .map(|(name, v)| {
            let shown = match byte_array(v) {
                Some(bytes) if bytes.len() == 32 && ACCOUNT_FIELDS.contains(&name.as_str()) => {
                    AccountId32(bytes.try_into().unwrap_or([0; 32])).to_string()
                }
                Some(bytes) if bytes.len() == 32 => hex0x(&bytes),
                Some(bytes)
                    if bytes.len() > 1
                        && bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') =>
                {
                    format!("{:?}", String::from_utf8_lossy(&bytes))
                }
                _ => v.to_string(),
            };
            format!("{name}: {shown}")
        })
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

/// The bytes of a value that is (possibly nested in one-field wrappers) an array of u8.
pub(super) fn byte_array(v: &Value) -> Option<Vec<u8>> {
    use subxt::ext::scale_value::{Composite, Primitive, ValueDef};
    let ValueDef::Composite(c) = &v.value else {
        return None;
    };
    let items: Vec<&Value> = match c {
        Composite::Unnamed(items) => items.iter().collect(),
        Composite::Named(items) => items.iter().map(|(_, v)| v).collect(),
    };
    if items.len() == 1 {
        if let Some(inner) = byte_array(items[0]) {
            return Some(inner);
        }
    }
    items
        .iter()
        .map(|x| match &x.value {
            ValueDef::Primitive(Primitive::U128(n)) => u8::try_from(*n).ok(),
            _ => None,
        })
        .collect()
}
