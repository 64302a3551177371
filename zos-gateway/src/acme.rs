//! Certificates from an ACME CA (Let's Encrypt in production, pebble in tests) for the hosts
//! whose TLS the gateway terminates: HTTP-01 challenges answered by the gateway's plain HTTP
//! listener, or, with the gateway domain's own name server (`zone`), one wildcard certificate
//! for every name under the domain proved over DNS-01; certificates renewed before they
//! expire, failures retried with exponential backoff and new orders capped per hour, so the
//! CA's rate limits are never reached.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{anyhow, bail, Context, Result};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use crate::{
    certs::CertStore,
    routes::Routes,
    zone::{challenge_name, Zone},
};

/// Pending challenges kept at most (a bound against a flood of routes).
const MAX_PENDING_CHALLENGES: usize = 4096;

/// The HTTP-01 answers the plain HTTP listener serves while orders are pending.
#[derive(Debug, Default)]
pub struct Http01Challenges {
    tokens: RwLock<HashMap<String, String>>,
}

impl Http01Challenges {
    fn insert(&self, token: String, key_authorization: String) -> Result<()> {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= MAX_PENDING_CHALLENGES {
            bail!("too many pending challenges");
        }
        tokens.insert(token, key_authorization);
        Ok(())
    }

    fn remove(&self, token: &str) {
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// The key authorization for a challenge token, while its order is pending.
    pub fn key_authorization(&self, token: &str) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }
}

/// Where and how certificates are ordered.
#[derive(Clone, Debug)]
pub struct AcmeSettings {
    /// The CA's ACME directory URL.
    pub directory_url: String,
    /// The root (PEM file) of the CA's own HTTPS certificate when it is not publicly trusted,
    /// as with a test CA.
    pub server_root: Option<PathBuf>,
    /// Contact URIs for the account (`mailto:...`).
    pub contact: Vec<String>,
    /// A certificate is renewed when it expires within this time.
    pub renew_before: Duration,
    /// The first retry after a failed order; doubled per failure up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// New orders per rolling hour over all hosts.
    pub max_orders_per_hour: usize,
}

impl AcmeSettings {
    /// Defaults for a CA at `directory_url`: renew 30 days ahead, retry after 1 min up to a
    /// day, at most 20 orders an hour (Let's Encrypt allows 300 per 3 hours per account).
    pub fn new(directory_url: impl Into<String>) -> Self {
        Self {
            directory_url: directory_url.into(),
            server_root: None,
            contact: Vec::new(),
            renew_before: Duration::from_secs(30 * 24 * 3600),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(24 * 3600),
            max_orders_per_hour: 20,
        }
    }
}

/// What happened to a host in a renewal round.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    Issued,
    Failed(String),
    /// Not tried: the host is backing off after failures.
    BackingOff,
    /// Not tried: the hourly order budget is spent.
    OverBudget,
}

struct Backoff {
    failures: u32,
    next_try: Instant,
}

/// Keeps a certificate for every terminated route.
pub struct CertManager {
    settings: AcmeSettings,
    account_file: PathBuf,
    certs: Arc<CertStore>,
    routes: Arc<Routes>,
    challenges: Arc<Http01Challenges>,
    account: tokio::sync::Mutex<Option<Account>>,
    backoff: Mutex<HashMap<String, Backoff>>,
    orders: Mutex<VecDeque<Instant>>,
    /// With the gateway domain's own name server: one wildcard certificate for the names
    /// under the domain, proved over DNS-01.
    zone: Option<Arc<Zone>>,
}

/// What an order put up to prove control, taken down when the order is done.
enum Proof {
    Http01 { token: String },
    Dns01 { name: String, value: String },
}

impl CertManager {
    /// `state_dir` keeps the ACME account (0600).
    pub fn new(
        settings: AcmeSettings,
        state_dir: &Path,
        certs: Arc<CertStore>,
        routes: Arc<Routes>,
        challenges: Arc<Http01Challenges>,
    ) -> Self {
        Self {
            settings,
            account_file: state_dir.join("acme-account.json"),
            certs,
            routes,
            challenges,
            account: tokio::sync::Mutex::new(None),
            backoff: Mutex::default(),
            orders: Mutex::default(),
            zone: None,
        }
    }

    /// Orders the names under `zone`'s domain as one wildcard certificate, proved by DNS-01
    /// answers that the zone's name server gives (other hosts keep HTTP-01).
    pub fn with_dns01(mut self, zone: Arc<Zone>) -> Self {
        self.zone = Some(zone);
        self
    }

    /// The certificate that serves `host`: the wildcard of the gateway domain for a name
    /// directly under it (with DNS-01), else the host's own.
    pub fn certificate_name(&self, host: &str) -> String {
        let domain = self.zone.as_ref().and_then(|zone| zone.domain());
        match (domain, host.split_once('.')) {
            (Some(domain), Some((_, parent))) if parent == domain => format!("*.{domain}"),
            _ => host.to_string(),
        }
    }

    /// The certificates the terminated routes need. While the wildcard fails (its domain not
    /// delegated to the node yet, say), the names under it get their own over HTTP-01 too,
    /// and the wildcard is tried again as its backoff allows.
    fn served_certificates(&self) -> Vec<String> {
        let failing: Vec<String> = self
            .backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|name| name.starts_with("*."))
            .cloned()
            .collect();
        let mut names = Vec::new();
        for host in self.routes.terminated_hosts() {
            let name = self.certificate_name(&host);
            if name != host && failing.contains(&name) {
                names.push(host);
            }
            names.push(name);
        }
        names.sort();
        names.dedup();
        names
    }

    /// Renews what is due every `period`, and whenever `wake` is notified (a route was
    /// added), forever.
    pub async fn run(self: Arc<Self>, period: Duration, wake: Arc<tokio::sync::Notify>) {
        loop {
            for (host, outcome) in self.renew_due().await {
                if let Renewal::Failed(reason) = outcome {
                    tracing::warn!(%host, "certificate order failed: {reason}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = wake.notified() => {}
            }
        }
    }

    /// The certificates (a terminated host's, or the domain's wildcard) missing or expiring
    /// within `renew_before`.
    pub fn due(&self) -> Vec<String> {
        let horizon = SystemTime::now() + self.settings.renew_before;
        self.served_certificates()
            .into_iter()
            .filter(|host| {
                self.certs
                    .lookup(host)
                    .is_none_or(|c| c.not_after <= horizon)
            })
            .collect()
    }

    /// Orders a certificate for every due host that is not backing off, within the budget.
    pub async fn renew_due(&self) -> Vec<(String, Renewal)> {
        let mut outcomes = Vec::new();
        // Failures of hosts no route serves any more are forgotten.
        let served = self.served_certificates();
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|host, _| served.contains(host));
        for host in self.due() {
            let now = Instant::now();
            let waiting = self
                .backoff
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&host)
                .is_some_and(|b| b.next_try > now);
            if waiting {
                outcomes.push((host, Renewal::BackingOff));
                continue;
            }
            if !self.take_order_slot(now) {
                outcomes.push((host, Renewal::OverBudget));
                continue;
            }
            let outcome = match self.issue(&host).await {
                Ok(()) => {
                    self.backoff
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&host);
                    tracing::info!(%host, "certificate issued");
                    Renewal::Issued
                }
                Err(e) => {
                    let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = backoff.entry(host.clone()).or_insert(Backoff {
                        failures: 0,
                        next_try: now,
                    });
                    entry.failures = entry.failures.saturating_add(1);
                    let delay = self
                        .settings
                        .retry_min
                        .saturating_mul(1 << (entry.failures - 1).min(20))
                        .min(self.settings.retry_max);
                    entry.next_try = Instant::now() + delay;
                    Renewal::Failed(format!("{e:#}"))
                }
            };
            outcomes.push((host, outcome));
        }
        outcomes
    }

    fn take_order_slot(&self, now: Instant) -> bool {
        let mut orders = self.orders.lock().unwrap_or_else(|e| e.into_inner());
        while orders
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(3600))
        {
            orders.pop_front();
        }
        if orders.len() >= self.settings.max_orders_per_hour {
            return false;
        }
        orders.push_back(now);
        true
    }

    async fn account(&self) -> Result<Account> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let builder = match &self.settings.server_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        }
        .context("ACME HTTP client")?;
        let account = match fs::read(&self.account_file) {
            Ok(stored) => {
                let credentials: AccountCredentials =
                    serde_json::from_slice(&stored).context("stored ACME account")?;
                builder
                    .from_credentials(credentials)
                    .await
                    .context("restoring the ACME account")?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory_url.clone(),
                        None,
                    )
                    .await
                    .context("creating the ACME account")?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&self.account_file)
                    .with_context(|| format!("writing {}", self.account_file.display()))?;
                file.write_all(&serde_json::to_vec(&credentials)?)?;
                account
            }
            Err(e) => return Err(e).context("reading the ACME account"),
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Orders, proves (HTTP-01, or DNS-01 for a wildcard) and installs a certificate for
    /// `host` (`*.<domain>` for the wildcard).
    pub async fn issue(&self, host: &str) -> Result<()> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .context("new order")?;
        let mut proofs = Vec::new();
        let proved = self.answer_challenges(&mut order, host, &mut proofs).await;
        let finished = match proved {
            Ok(()) => self.finish(&mut order, host).await,
            Err(e) => Err(e),
        };
        for proof in proofs {
            match proof {
                Proof::Http01 { token } => self.challenges.remove(&token),
                Proof::Dns01 { name, value } => {
                    if let Some(zone) = &self.zone {
                        zone.remove_challenge(&name, &value);
                    }
                }
            }
        }
        finished
    }

    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        host: &str,
        proofs: &mut Vec<Proof>,
    ) -> Result<()> {
        let wildcard_of = host.strip_prefix("*.");
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.context("authorization")?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => bail!("authorization is {status:?}"),
            }
            match (wildcard_of, &self.zone) {
                (Some(domain), Some(zone)) => {
                    let mut challenge = authorization
                        .challenge(ChallengeType::Dns01)
                        .ok_or_else(|| anyhow!("the CA offers no DNS-01 challenge"))?;
                    let (name, value) = (
                        challenge_name(domain),
                        challenge.key_authorization().dns_value(),
                    );
                    zone.add_challenge(&name, value.clone())?;
                    proofs.push(Proof::Dns01 { name, value });
                    challenge.set_ready().await.context("challenge ready")?;
                }
                (Some(_), None) => bail!("a wildcard needs the gateway domain's name server"),
                (None, _) => {
                    let mut challenge = authorization
                        .challenge(ChallengeType::Http01)
                        .ok_or_else(|| anyhow!("the CA offers no HTTP-01 challenge"))?;
                    let key_authorization = challenge.key_authorization().as_str().to_string();
                    self.challenges
                        .insert(challenge.token.clone(), key_authorization)?;
                    proofs.push(Proof::Http01 {
                        token: challenge.token.clone(),
                    });
                    challenge.set_ready().await.context("challenge ready")?;
                }
            }
        }
        Ok(())
    }

    async fn finish(&self, order: &mut instant_acme::Order, host: &str) -> Result<()> {
        let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order
            .poll_ready(&retries)
            .await
            .context("waiting for validation")?;
        if status != OrderStatus::Ready {
            let mut reasons = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(authorization)) = authorizations.next().await {
                for challenge in &authorization.challenges {
                    if let Some(error) = &challenge.error {
                        reasons.push(error.to_string());
                    }
                }
            }
            bail!("the order is {status:?}: {}", reasons.join("; "));
        }
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()]);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.alg = &rcgen::PKCS_ECDSA_P256_SHA256;
        let key = rcgen::Certificate::from_params(params).context("generating a key")?;
        let csr = key.serialize_request_der().context("CSR")?;
        order
            .finalize_csr(&csr)
            .await
            .context("finalizing the order")?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .context("downloading the certificate")?;
        self.certs.install(
            host,
            chain.as_bytes(),
            key.serialize_private_key_pem().as_bytes(),
        )
    }
}
