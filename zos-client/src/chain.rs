//! The door to the chain for the executor, the CLI and the tests: a subxt client with static
//! code generated from the committed runtime metadata (`metadata/zos-runtime.scale`, refreshed by
//! `scripts/refresh-metadata.sh`; a test fails when it no longer matches the runtime).
//!
//! Reads happen at the latest FINALIZED block. Writes are signed with the node key, mortal
//! (64 blocks), take their nonce from the chain (pool included), are watched until finalized,
//! and are retried with backoff by the callers; every call the executor sends is idempotent
//! on chain (heartbeats are rate-limited, reports are keyed by contract + window / version).

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use codec::{Decode, Encode};
use subxt::{
    config::{RpcConfigFor, SubstrateExtrinsicParamsBuilder},
    error::{DispatchError, TransactionEventsError, TransactionFinalizedSuccessError},
    rpcs::{client::ReconnectingRpcClient, LegacyRpcMethods, RpcClient},
    transactions::Payload,
    OnlineClient, SubstrateConfig,
};
use subxt_signer::sr25519::Keypair;
use zos_primitives::{contracts::NodeContract, ContractId, FarmId, NodeId, Resources};

#[subxt::subxt(
    runtime_metadata_path = "metadata/zos-runtime.scale",
    derive_for_all_types = "Clone, PartialEq, Eq, ::subxt::ext::codec::Encode, ::subxt::ext::codec::Decode"
)]
pub mod runtime {}

use runtime::runtime_types;

mod error;
pub use error::{ChainError, TxError};

pub type Client = OnlineClient<SubstrateConfig>;

/// Calls a runtime API through its statically generated payload (`runtime::runtime_apis()...`): trait,
/// method and argument types are checked at compile time, and the live runtime's API is
/// checked against the one compiled in before the call. The answer is decoded with `codec`
/// straight into the primitives type of the same encoding. Read at the latest finalized
/// block, whose number comes back with the answer.
pub async fn call_runtime_api<P, R>(api: &Client, payload: P) -> Result<(u64, R)>
where
    P: subxt::runtime_apis::Payload,
    R: Decode,
{
    let at = api.at_current_block().await?;
    let apis = at.runtime_apis();
    let name = apis.encode_name(&payload);
    apis.validate(&payload)
        .with_context(|| format!("{name}: this runtime's API differs from the one compiled in"))?;
    let args = apis
        .encode_args(&payload)
        .with_context(|| format!("encoding the arguments of {name}"))?;
    let bytes = apis
        .call_raw(&name, Some(&args))
        .await
        .with_context(|| format!("calling {name} at block {}", at.block_number()))?;
    let value =
        R::decode(&mut &bytes[..]).with_context(|| format!("decoding the answer of {name}"))?;
    Ok((at.block_number(), value))
}
/// A contract's billing state as the billing runtime API returns it.
pub type BillingStatus = zos_primitives::billing::ContractBillingStatus<u128, u32>;
/// Used when the metadata does not carry the billing pallet's `MaxWindowSecs`.
const DEFAULT_MAX_WINDOW_SECS: u64 = 3600;

/// An account's nonces: at the finalized block (`at`), and the next one counting pending
/// transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nonces {
    pub finalized: u64,
    pub pending: u64,
    pub at: u64,
}
/// Events of one finalized extrinsic.
pub type Events = subxt::extrinsics::ExtrinsicEvents<SubstrateConfig>;

/// Every event of a finished transaction as `(pallet, name, fields)`.
pub fn event_list(
    events: &Events,
) -> Result<Vec<(String, String, subxt::ext::scale_value::Value)>> {
    let mut out = Vec::new();
    for ev in events.iter() {
        let ev = ev?;
        let fields = ev.decode_fields_unchecked_as::<subxt::ext::scale_value::Value>()?;
        out.push((
            ev.pallet_name().to_string(),
            ev.event_name().to_string(),
            fields,
        ));
    }
    Ok(out)
}

/// A finalized block the follower has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub number: u64,
    pub hash: [u8; 32],
}

/// SCALE re-encoding between a primitives type and its generated twin: the runtime defines
/// the generated type from the very same Rust type, so the layouts are identical.
pub fn convert<A: Encode, B: Decode>(value: &A) -> Result<B> {
    B::decode(&mut &value.encode()[..])
        .context("primitives and generated types disagree (stale metadata?)")
}

pub struct Chain {
    pub api: Client,
    rpc: LegacyRpcMethods<RpcConfigFor<SubstrateConfig>>,
    /// Held from nonce lookup until the transaction is in the pool, so concurrent submissions
    /// from the node key get consecutive nonces; released before waiting for finality.
    submit_lock: tokio::sync::Mutex<()>,
    max_window_secs: u64,
    min_window_secs: u64,
    max_traffic_bytes_per_sec: u64,
}

impl Chain {
    /// Connects through a reconnecting RPC client: a node restart does not kill the executor.
    pub async fn connect(url: &str) -> Result<Self> {
        let inner = tokio::time::timeout(
            Duration::from_secs(30),
            ReconnectingRpcClient::builder().build(url),
        )
        .await
        .map_err(|_| anyhow!("connecting to {url}: no answer within 30 s"))?
        .with_context(|| format!("connecting to {url}"))?;
        Self::with_rpc(RpcClient::new(inner)).await
    }

    /// Connects once, without reconnecting: for a command that should fail at once when the
    /// chain is not there (the CLI), rather than wait for it.
    pub async fn connect_once(url: &str) -> Result<Self> {
        let rpc_client =
            tokio::time::timeout(Duration::from_secs(30), RpcClient::from_insecure_url(url))
                .await
                .map_err(|_| anyhow!("connecting to {url}: no answer within 30 s"))?
                .with_context(|| format!("connecting to {url}"))?;
        Self::with_rpc(rpc_client).await
    }

    async fn with_rpc(rpc_client: RpcClient) -> Result<Self> {
        let api = Client::from_rpc_client(rpc_client.clone())
            .await
            .context("fetching chain metadata")?;
        let at = api.at_current_block().await?;
        if !runtime::is_codegen_valid_for(at.metadata_ref()) {
            tracing::warn!(
                "the chain's runtime differs from the metadata this executor was built with"
            );
        }
        let billing_constant = |name: &str| {
            at.metadata_ref()
                .pallet_by_name("Billing")
                .and_then(|p| p.constant_by_name(name))
                .and_then(|c| u64::decode(&mut c.value()).ok())
        };
        let max_window_secs = billing_constant("MaxWindowSecs").unwrap_or(DEFAULT_MAX_WINDOW_SECS);
        let min_window_secs = billing_constant("MinWindowSecs").unwrap_or(1).max(1);
        // A chain without the constant caps nothing.
        let max_traffic_bytes_per_sec =
            billing_constant("MaxTrafficBytesPerSec").unwrap_or(u64::MAX);
        Ok(Self {
            api,
            rpc: LegacyRpcMethods::new(rpc_client),
            submit_lock: Default::default(),
            max_window_secs,
            min_window_secs,
            max_traffic_bytes_per_sec,
        })
    }

    /// Calls a runtime API (`runtime::apis()...`) at the latest finalized block; see
    /// [`call_runtime_api`].
    pub async fn runtime_api<P, R>(&self, payload: P) -> Result<R>
    where
        P: subxt::runtime_apis::Payload,
        R: Decode,
    {
        Ok(call_runtime_api(&self.api, payload).await?.1)
    }

    pub async fn finalized(&self) -> Result<BlockRef> {
        let hash = self.rpc.chain_get_finalized_head().await?;
        let header = self
            .rpc
            .chain_get_header(Some(hash))
            .await?
            .context("finalized header missing")?;
        Ok(BlockRef {
            number: header.number,
            hash: hash.0,
        })
    }

    pub async fn node_of(&self, account: &subxt::utils::AccountId32) -> Result<Option<NodeId>> {
        let payload = runtime::runtime_apis()
            .grid_api()
            .node_by_account(account.clone());
        Ok(call_runtime_api(&self.api, payload).await?.1)
    }

    /// The desired state: every contract on `node` with its active spec, and the finalized
    /// block it was read at.
    pub async fn contracts_of_node(&self, node: NodeId) -> Result<(u64, Vec<NodeContract>)> {
        let payload = runtime::runtime_apis()
            .deployments_api()
            .contracts_of_node(node);
        let (at, list): (u64, Vec<(ContractId, NodeContract)>) =
            call_runtime_api(&self.api, payload).await?;
        Ok((at, list.into_iter().map(|(_, c)| c).collect()))
    }

    /// Billing state of a contract at the finalized block; `None` when the chain does not bill
    /// it (ended, or never activated).
    pub async fn billing_status(&self, contract: ContractId) -> Result<Option<BillingStatus>> {
        Ok(self.billing_status_numbered(contract).await?.1)
    }

    /// [`Self::billing_status`] and the finalized block it was read at.
    pub async fn billing_status_numbered(
        &self,
        contract: ContractId,
    ) -> Result<(u64, Option<BillingStatus>)> {
        let payload = runtime::runtime_apis()
            .billing_api()
            .contract_billing(contract);
        call_runtime_api(&self.api, payload).await
    }

    /// The longest consumption window the chain accepts (the billing pallet's constant).
    pub fn max_window_secs(&self) -> u64 {
        self.max_window_secs
    }

    /// The shortest window the chain accepts unless it ends on a multiple of it (the billing
    /// pallet's constant): report intervals must be multiples of it.
    pub fn min_window_secs(&self) -> u64 {
        self.min_window_secs
    }

    /// The most public traffic per second of a window the chain accepts in a report (the
    /// billing pallet's constant).
    pub fn max_traffic_bytes_per_sec(&self) -> u64 {
        self.max_traffic_bytes_per_sec
    }

    /// Whether the node behind the RPC says it is still syncing (its state may be old).
    pub async fn is_syncing(&self) -> Result<bool> {
        Ok(self.rpc.system_health().await?.is_syncing)
    }

    /// Where billing stands for a contract: the end of its last accepted window (unix s).
    pub async fn billed_until(&self, contract: ContractId) -> Result<Option<u64>> {
        Ok(self
            .billing_status(contract)
            .await?
            .and_then(|s| s.billed_until))
    }

    /// The account's nonce at the finalized block, and the next nonce counting transactions
    /// still pending (in the pool or in blocks not finalized yet).
    pub async fn account_nonces(&self, account: &subxt::utils::AccountId32) -> Result<Nonces> {
        let at = self.api.at_current_block().await?;
        let finalized = at
            .storage()
            .fetch(runtime::storage().system().account(), (account.clone(),))
            .await?
            .decode()?
            .nonce;
        let pending = self.rpc.system_account_next_index(account).await?;
        Ok(Nonces {
            finalized: u64::from(finalized),
            pending,
            at: at.block_number(),
        })
    }

    pub async fn free_balance(&self, account: &subxt::utils::AccountId32) -> Result<u128> {
        let at = self.api.at_current_block().await?;
        let info = at
            .storage()
            .fetch(runtime::storage().system().account(), (account.clone(),))
            .await?
            .decode()?;
        Ok(info.data.free)
    }

    /// The node a contract runs on and its signers' public keys, at the finalized block;
    /// `None` when there is no such contract (an ended one is removed).
    pub async fn contract_node_and_signers(
        &self,
        contract: ContractId,
    ) -> Result<Option<(NodeId, Vec<[u8; 32]>)>> {
        Ok(self
            .contract_parties(contract)
            .await?
            .map(|(node, _, signers)| (node, signers)))
    }

    /// The owner of `contract` (it never changes), if the contract exists.
    pub async fn contract_owner(&self, contract: ContractId) -> Result<Option<[u8; 32]>> {
        Ok(self
            .contract_parties(contract)
            .await?
            .map(|(_, owner, _)| owner))
    }

    /// A contract's node, owner and signers' public keys, at the finalized block.
    async fn contract_parties(
        &self,
        contract: ContractId,
    ) -> Result<Option<(NodeId, [u8; 32], Vec<[u8; 32]>)>> {
        let at = self.api.at_current_block().await?;
        let Some(value) = at
            .storage()
            .try_fetch(runtime::storage().deployments().contracts(), (contract,))
            .await?
        else {
            return Ok(None);
        };
        let c = value.decode()?;
        Ok(Some((
            c.node,
            c.owner.0,
            c.signers.0.iter().map(|s| s.account.0).collect(),
        )))
    }

    /// Whether the owner of `farm` authorized `account` to register a node into it (and the
    /// authorization was not used or revoked), at the best block.
    pub async fn node_authorized(
        &self,
        farm: u32,
        account: &subxt::utils::AccountId32,
    ) -> Result<bool> {
        let at = self.api.at_current_block().await?;
        Ok(at
            .storage()
            .try_fetch(
                runtime::storage().grid().node_authorizations(),
                (farm, account.clone()),
            )
            .await?
            .is_some())
    }

    /// Signs, submits and waits until finalized. The nonce includes pending pool transactions,
    /// so back-to-back submissions from the node key do not collide.
    pub async fn submit<C: Payload>(
        &self,
        call: &C,
        signer: &Keypair,
        timeout: Duration,
    ) -> Result<Events, TxError> {
        let account = signer.public_key().to_account_id();
        let run = async {
            let progress = {
                let _guard = self.submit_lock.lock().await;
                let nonce = self
                    .rpc
                    .system_account_next_index(&account)
                    .await
                    .map_err(|e| TxError::Transient(e.into()))?;
                let params = SubstrateExtrinsicParamsBuilder::<SubstrateConfig>::new()
                    .nonce(nonce)
                    .mortal(64)
                    .build();
                self.api
                    .at_current_block()
                    .await
                    .map_err(|e| TxError::Transient(e.into()))?
                    .tx()
                    .sign_and_submit_then_watch(call, signer, params)
                    .await
                    .map_err(|e| TxError::submission(e.to_string()))?
            };
            match progress.wait_for_finalized_success().await {
                Ok(events) => Ok(events),
                Err(TransactionFinalizedSuccessError::SuccessError(
                    TransactionEventsError::ExtrinsicFailed(DispatchError::Module(e)),
                )) => Err(TxError::Dispatch(ChainError::from_module(&e))),
                Err(TransactionFinalizedSuccessError::SuccessError(
                    TransactionEventsError::ExtrinsicFailed(e),
                )) => Err(TxError::Dispatch(ChainError::other(
                    "DispatchError",
                    e.to_string(),
                ))),
                Err(e) => Err(TxError::Transient(anyhow!("waiting for finality: {e}"))),
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| TxError::Transient(anyhow!("not finalized within {timeout:?}")))?
    }
}

/// What a node reports for one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportedOutcome {
    Ok,
    /// The workload failed: the contract fails with this reason.
    Failed(String),
    /// A health check's VM fails its probe: the contract stays deployed.
    Unhealthy(String),
}

/// Calls the executor sends, built from primitives values.
pub mod calls {
    use super::*;
    use zos_primitives::contracts::FailureText;

    pub fn register_node(
        farm: FarmId,
        capacity: Resources,
        box_key: [u8; 32],
        version: &str,
    ) -> Result<impl Payload> {
        let location = runtime_types::pallet_grid::types::Location {
            city: bounded(b"unknown")?,
            country: bounded(b"unknown")?,
            latitude: 0,
            longitude: 0,
        };
        Ok(runtime::tx().grid().register_node(
            farm,
            convert(&capacity)?,
            box_key,
            location,
            None,
            bounded(version.as_bytes())?,
        ))
    }

    pub fn update_capacity(
        capacity: Resources,
        box_key: [u8; 32],
        version: &str,
        node: &runtime_types::pallet_grid::types::Node,
    ) -> Result<impl Payload> {
        Ok(runtime::tx().grid().update_node(
            convert(&capacity)?,
            node.location.clone(),
            node.public_config.clone(),
            bounded(version.as_bytes())?,
            box_key,
        ))
    }

    /// Publishes (or, with `None`, withdraws) the node's overlay endpoint, with its key's
    /// proof (the key's signature over `overlay_key_proof_message` of the node account).
    pub fn set_node_overlay(
        endpoint: Option<(
            &zos_primitives::OverlayEndpoint,
            zos_primitives::OverlayKeyProof,
        )>,
    ) -> Result<impl Payload> {
        let endpoint = endpoint
            .map(|(e, proof)| convert(e).map(|e| (e, proof)))
            .transpose()?;
        Ok(runtime::tx().grid().set_node_overlay(endpoint))
    }

    pub fn heartbeat() -> impl Payload {
        runtime::tx().grid().heartbeat()
    }

    /// One entry per workload of the spec, in spec order, as the pallet requires.
    pub fn report_deployment(
        contract: ContractId,
        version: u32,
        outcomes: &[(Vec<u8>, ReportedOutcome)],
    ) -> Result<impl Payload> {
        use runtime_types::pallet_deployments::types::{WorkloadReport, WorkloadResult};
        // Reasons longer than the chain's bound are cut at a char boundary.
        let bounded = |reason: &str| -> Result<_> {
            let max = zos_primitives::contracts::MAX_FAILURE_REASON_LEN as usize;
            let mut end = reason.len().min(max);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let text: FailureText = FailureText::truncate_from(reason.as_bytes()[..end].to_vec());
            convert(&text)
        };
        let mut reports = Vec::with_capacity(outcomes.len());
        for (name, outcome) in outcomes {
            let result = match outcome {
                ReportedOutcome::Ok => WorkloadResult::Ok,
                ReportedOutcome::Failed(reason) => WorkloadResult::Error(bounded(reason)?),
                ReportedOutcome::Unhealthy(reason) => WorkloadResult::Unhealthy(bounded(reason)?),
            };
            reports.push(WorkloadReport {
                name: convert(
                    &zos_primitives::spec::WorkloadName::try_from(name.as_slice())
                        .map_err(|_| anyhow!("workload name too long"))?,
                )?,
                result,
            });
        }
        Ok(runtime::tx().deployments().report_deployment(
            contract,
            version,
            runtime_types::bounded_collections::bounded_vec::BoundedVec(reports),
        ))
    }

    pub fn report_consumption(reports: &[ConsumptionReport]) -> Result<impl Payload> {
        let reports: Vec<runtime_types::pallet_billing::types::ConsumptionReport> =
            reports.iter().map(convert).collect::<Result<_>>()?;
        Ok(runtime::tx().billing().report_consumption(
            runtime_types::bounded_collections::bounded_vec::BoundedVec(reports),
        ))
    }

    fn bounded<T: Decode>(bytes: &[u8]) -> Result<T> {
        // A bounded byte vector is SCALE-encoded exactly like a Vec<u8>.
        convert(&bytes.to_vec())
    }
}

/// The billing pallet's report, mirrored here (the pallet crate is not a dependency of the
/// executor); `report_consumption` checks the layout against the metadata via `convert`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ConsumptionReport {
    pub contract: ContractId,
    pub window_start: u64,
    pub window_end: u64,
    pub uptime_seconds: u64,
    pub public_bytes_in: u64,
    pub public_bytes_out: u64,
}

/// The overlay endpoint node `node` publishes, if any.
pub async fn node_overlay(
    chain: &Chain,
    node: NodeId,
) -> Result<Option<zos_primitives::OverlayEndpoint>> {
    let at = chain.api.at_current_block().await?;
    match at
        .storage()
        .try_fetch(runtime::storage().grid().node_overlays(), (node,))
        .await?
    {
        Some(endpoint) => Ok(Some(convert(&endpoint.decode()?)?)),
        None => Ok(None),
    }
}

/// Reads the node's on-chain record (for capacity updates).
pub async fn node_record(
    chain: &Chain,
    node: NodeId,
) -> Result<runtime_types::pallet_grid::types::Node> {
    let at = chain.api.at_current_block().await?;
    let Some(node) = at
        .storage()
        .try_fetch(runtime::storage().grid().nodes(), (node,))
        .await?
    else {
        bail!("node {node} not found on chain");
    };
    Ok(node.decode()?)
}
